"Helpers shared by the tests (pytest puts this folder on sys.path)."
import torch


def padded_batch(lengths, vocab_size, seed=0):
    "Random token ids (>= 5, so no special tokens) padded with 0 to the longest length, and the bool mask."
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(5, vocab_size, (len(lengths), T), generator=g)
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    return ids.masked_fill(~mask, 0), mask
