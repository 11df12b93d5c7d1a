"Helpers shared by the tests (pytest puts this folder on sys.path)."
import torch


def padded_batch(lengths, vocab_size, seed=0):
    "Random token ids (>= 5, so no special tokens) padded with 0 to the longest length, and the bool mask."
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(5, vocab_size, (len(lengths), T), generator=g)
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    return ids.masked_fill(~mask, 0), mask


def routing_load(num_experts=4, capacity_factor=1.0, temperature=1.0, jitter=0.0, n_tokens=512, d_model=16, seed=0, **kw):
    "Diagnostics of an untrained Switch layer on clustered synthetic tokens (the explorer's data of chapter `moe`)."
    from moe_course.moe import Switch
    g = torch.Generator().manual_seed(seed)
    freq = 1 / torch.arange(1, 9).float()                                # 8 clusters, Zipf-like frequencies
    centers = torch.randn(8, d_model, generator=g)
    cluster = torch.multinomial(freq, n_tokens, replacement=True, generator=g)
    x = centers[cluster] + 0.5 * torch.randn(n_tokens, d_model, generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sw = Switch(d_model, 2 * d_model, num_experts, capacity_factor, jitter=jitter, temperature=temperature, **kw)
        sw.train(jitter > 0)
        with torch.no_grad(): return sw(x[None], token_ids=cluster[None])[1]
