"Tests of moe_course.embeddings.TokenAndPositionEmbedding: formula, padding, noise only in training, errors."
import pytest
import torch
from torch import nn

from moe_course.embeddings import TokenAndPositionEmbedding


def make(noise_std=0.0, **kw):
    torch.manual_seed(0)
    return TokenAndPositionEmbedding(kw.pop("vocab_size", 50), kw.pop("max_len", 16), kw.pop("d_model", 32),
                                     noise_std=noise_std, **kw)


def ids(B=4, T=10, V=50, seed=1):
    return torch.randint(1, V, (B, T), generator=torch.Generator().manual_seed(seed))


def test_attributes_and_shape():
    e = make(pad_id=0)
    assert isinstance(e.tok_emb, nn.Embedding) and isinstance(e.pos_emb, nn.Embedding)
    assert e.tok_emb.weight.shape == (50, 32) and e.pos_emb.weight.shape == (16, 32)
    assert e.tok_emb.padding_idx == 0
    out = e(ids())
    assert out.shape == (4, 10, 32) and out.dtype == torch.float32


def test_matches_formula_in_eval():
    e = make(noise_std=0.5).eval()
    x = ids()
    expected = e.tok_emb.weight[x] + e.pos_emb.weight[: x.shape[1]].unsqueeze(0)
    torch.testing.assert_close(e(x), expected)


def test_no_noise_in_eval_is_deterministic():
    e = make(noise_std=1.0).eval()
    x = ids()
    with torch.no_grad():
        torch.manual_seed(1); a = e(x)
        torch.manual_seed(2); b = e(x)
    assert torch.equal(a, b)


def test_noise_in_training_has_the_right_std():
    sigma = 0.3
    e = make(noise_std=sigma)
    x = ids(B=16, T=16)
    with torch.no_grad():
        clean = e.eval()(x)
        noisy = e.train()(x)
    eps = noisy - clean                                      # 16*16*32 = 8192 samples
    assert not torch.equal(noisy, clean)
    se = sigma / (2 * eps.numel()) ** 0.5                    # standard error of the sample std
    assert abs(eps.std().item() - sigma) < 6 * se
    assert abs(eps.mean().item()) < 6 * sigma / eps.numel() ** 0.5
    # independent across coordinates: the correlation of neighbouring coordinates is ~0
    flat = eps.reshape(-1, 32)
    corr = torch.corrcoef(torch.stack([flat[:, 0], flat[:, 1]]))[0, 1]
    assert abs(corr.item()) < 0.2


def test_noise_is_fresh_each_call_and_seeded():
    e = make(noise_std=0.1).train()
    x = ids()
    with torch.no_grad():
        torch.manual_seed(7); a = e(x); b = e(x)
        torch.manual_seed(7); c = e(x)
    assert not torch.equal(a, b)
    assert torch.equal(a, c)


def test_zero_noise_in_training_equals_eval():
    e = make(noise_std=0.0)
    x = ids()
    assert torch.equal(e.train()(x), e.eval()(x))


def test_padding_row_is_zero_and_gets_no_gradient():
    e = make(pad_id=0).eval()
    x = torch.tensor([[5, 6, 0, 0]])
    out = e(x)
    torch.testing.assert_close(out[0, 2:], e.pos_emb.weight[2:4])
    e(x).pow(2).sum().backward()
    assert torch.equal(e.tok_emb.weight.grad[0], torch.zeros(32))
    assert e.tok_emb.weight.grad[5].abs().sum() > 0


def test_other_pad_id_and_none():
    assert make(pad_id=3).tok_emb.padding_idx == 3
    assert torch.equal(make(pad_id=3).tok_emb.weight[3], torch.zeros(32))
    assert make(pad_id=None).tok_emb.padding_idx is None


def test_noise_does_not_change_the_gradient_of_a_linear_loss():
    e = make(noise_std=0.5)
    x = ids()
    w = torch.randn(32)
    e.train(); (e(x) @ w).sum().backward(); g_train = [p.grad.clone() for p in e.parameters()]
    e.zero_grad(); e.eval(); (e(x) @ w).sum().backward()
    for g, p in zip(g_train, e.parameters()): torch.testing.assert_close(g, p.grad)


def test_length_limits():
    e = make(max_len=8)
    assert e(ids(T=8)).shape == (4, 8, 32)                  # exactly max_len is fine
    assert e(ids(T=1)).shape == (4, 1, 32)
    with pytest.raises(ValueError, match="sequence length 9 exceeds max_len=8"):
        e(ids(T=9))


def test_bad_inputs():
    e = make()
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 50\)"):
        e(torch.tensor([[1, 50]]))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 50\)"):
        e(torch.tensor([[-1, 2]]))
    with pytest.raises(TypeError, match="integer tensor"):
        e(torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"must be \[batch, seq_len\]"):
        e(torch.ones(3, dtype=torch.long))


@pytest.mark.parametrize("kw,msg", [
    (dict(noise_std=-0.1), "noise_std must be a finite number >= 0"),
    (dict(noise_std=float("inf")), "noise_std must be a finite number >= 0"),
    (dict(pad_id=50), r"pad_id must be in \[0, vocab_size=50\)"),
    (dict(max_len=0), "max_len must be a positive int"),
    (dict(d_model=0), "d_model must be a positive int"),
])
def test_bad_construction(kw, msg):
    with pytest.raises(ValueError, match=msg):
        make(**kw)


def test_used_by_the_switch_transformer():
    tr = pytest.importorskip("moe_course.transformer")
    m = tr.SwitchTransformerClassifier(vocab_size=50, max_len=16, d_model=32, n_heads=4, d_ff=64, n_layers=1,
                                       num_experts=2, noise_std=0.2)
    assert isinstance(m.embedding, TokenAndPositionEmbedding) and m.embedding.noise_std == 0.2
    m.eval()
    x = ids(B=2, T=6)
    with torch.no_grad():
        assert torch.equal(m(x).logits, m(x).logits)
