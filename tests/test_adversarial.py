"Tests of moe_course.adversarial.FGM: exact restore, perturbation of norm epsilon, gradient accumulation, skips, errors."
import copy

import pytest
import torch
from torch import nn

from moe_course.adversarial import FGM


class Bag(nn.Module):
    "Token + position embeddings, mean pooled, linear head."
    def __init__(self, vocab=40, d=8, T=6, sparse=False):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d, padding_idx=0, sparse=sparse)
        self.pos_emb = nn.Embedding(T, d)
        self.head = nn.Linear(d, 2)
    def forward(self, ids):
        h = self.tok_emb(ids) + self.pos_emb(torch.arange(ids.shape[1]))
        return self.head(torch.tanh(h).mean(1))


class TwoTables(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.ModuleDict(dict(tok_emb=nn.Embedding(20, 4))), nn.ModuleDict(dict(tok_emb=nn.Embedding(20, 4)))
        self.head = nn.Linear(4, 2)
    def forward(self, ids): return self.head((self.a["tok_emb"](ids) * self.b["tok_emb"](ids)).mean(1))


def data(seed=0, B=8, T=6, V=40):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, V, (B, T), generator=g), torch.randint(0, 2, (B,), generator=g)


def setup(seed=0, **kw):
    torch.manual_seed(seed)
    m = Bag(**kw); x, y = data(seed)
    return m, x, y, nn.CrossEntropyLoss()


def state(m): return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("eps", [1.0, 0.05, 3.0])
def test_perturbation_has_norm_epsilon_along_the_gradient(eps):
    m, x, y, lf = setup()
    fgm = FGM(m, epsilon=eps)
    before = state(m)
    lf(m(x), y).backward()
    g = m.tok_emb.weight.grad.clone()
    assert fgm.attack() is True
    r = m.tok_emb.weight.detach() - before["tok_emb.weight"]
    torch.testing.assert_close(torch.linalg.vector_norm(r), torch.tensor(eps), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r, eps * g / g.norm(), rtol=1e-4, atol=1e-6)
    # only the token table moves; position table and head are untouched
    assert torch.equal(m.pos_emb.weight, before["pos_emb.weight"]) and torch.equal(m.head.weight, before["head.weight"])
    # rows of tokens absent from the batch (and the padding row) do not move
    absent = torch.ones(40, dtype=torch.bool); absent[x.unique()] = False
    assert absent[0] and torch.equal(r[absent], torch.zeros_like(r[absent]))


def test_attack_increases_the_loss_for_small_epsilon():
    m, x, y, lf = setup()
    fgm = FGM(m, epsilon=1e-2)
    loss = lf(m(x), y); loss.backward()
    fgm.attack()
    with torch.no_grad(): assert lf(m(x), y) > loss


def test_restore_is_bit_identical():
    m, x, y, lf = setup()
    fgm = FGM(m, epsilon=0.7)
    before = state(m)
    lf(m(x), y).backward(); fgm.attack()
    assert not torch.equal(m.tok_emb.weight, before["tok_emb.weight"])
    fgm.restore()
    for k, v in m.state_dict().items(): assert torch.equal(v, before[k]), k
    assert fgm.backup == {}


def test_restore_without_attack_and_double_restore_are_noops():
    m, x, y, lf = setup()
    fgm = FGM(m)
    before = state(m)
    fgm.restore()
    lf(m(x), y).backward(); fgm.attack(); fgm.restore(); fgm.restore()
    for k, v in m.state_dict().items(): assert torch.equal(v, before[k]), k


def test_two_attacks_then_restore_returns_to_clean_weights():
    m, x, y, lf = setup()
    fgm = FGM(m)
    before = state(m)
    lf(m(x), y).backward(); fgm.attack()
    lf(m(x), y).backward(); fgm.attack()
    fgm.restore()
    assert torch.equal(m.tok_emb.weight, before["tok_emb.weight"])


def test_training_step_accumulates_clean_and_adversarial_gradients():
    eps = 0.5
    m, x, y, lf = setup()
    # independent computation: clean grads at W, adversarial grads at W + eps g/||g||
    m_clean = copy.deepcopy(m); lf(m_clean(x), y).backward()
    clean = {n: p.grad.clone() for n, p in m_clean.named_parameters()}
    m_adv = copy.deepcopy(m)
    g = clean["tok_emb.weight"]
    with torch.no_grad(): m_adv.tok_emb.weight.add_(eps * g / g.norm())
    lf(m_adv(x), y).backward()
    adv = {n: p.grad.clone() for n, p in m_adv.named_parameters()}
    assert not torch.allclose(adv["head.weight"], clean["head.weight"])   # the two really differ
    # the FGM step
    m_sgd = copy.deepcopy(m)
    fgm, opt = FGM(m, epsilon=eps), torch.optim.SGD(m.parameters(), lr=0.1)
    lf(m(x), y).backward()
    assert fgm.attack()
    lf(m(x), y).backward()
    fgm.restore()
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, clean[n] + adv[n], rtol=1e-5, atol=1e-7)
    opt.step()
    # the update is applied to the clean weights with the summed gradient
    with torch.no_grad():
        for n, p in m_sgd.named_parameters(): p -= 0.1 * (clean[n] + adv[n])
    for (n, p), q in zip(m.named_parameters(), m_sgd.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("grad", ["none", "zero", "nan", "inf"])
def test_skips_unusable_gradients(grad):
    m, x, y, lf = setup()
    fgm = FGM(m)
    before = state(m)
    W = m.tok_emb.weight
    if grad == "zero": W.grad = torch.zeros_like(W)
    elif grad == "nan": W.grad = torch.full_like(W, float("nan"))
    elif grad == "inf": W.grad = torch.zeros_like(W).index_fill_(0, torch.tensor([3]), float("inf"))
    assert fgm.attack() is False
    assert fgm.backup == {}
    assert torch.equal(W, before["tok_emb.weight"])
    fgm.restore()
    assert torch.equal(W, before["tok_emb.weight"])


def test_zero_gradient_from_a_real_backward_is_skipped():
    m, x, y, lf = setup()
    fgm = FGM(m)
    m.head(torch.zeros(1, 8)).sum().backward()       # a loss that does not involve the embeddings
    assert m.tok_emb.weight.grad is None or m.tok_emb.weight.grad.abs().sum() == 0
    assert fgm.attack() is False


def test_each_matching_parameter_gets_its_own_epsilon_step():
    torch.manual_seed(0)
    m = TwoTables(); x, y = data(V=20)
    fgm = FGM(m, epsilon=0.3)
    before = state(m)
    nn.functional.cross_entropy(m(x), y).backward()
    m.b["tok_emb"].weight.grad.zero_()               # one usable gradient, one zero: only one is perturbed
    assert fgm.attack() is True
    assert list(fgm.backup) == ["a.tok_emb.weight"]
    ra = m.a["tok_emb"].weight.detach() - before["a.tok_emb.weight"]
    torch.testing.assert_close(ra.norm(), torch.tensor(0.3))
    assert torch.equal(m.b["tok_emb"].weight, before["b.tok_emb.weight"])
    fgm.restore()
    assert torch.equal(m.a["tok_emb"].weight, before["a.tok_emb.weight"])


def test_sparse_gradients_and_bfloat16_weights():
    m, x, y, lf = setup(sparse=True)
    fgm = FGM(m, epsilon=0.5)
    W0 = m.tok_emb.weight.detach().clone()
    lf(m(x), y).backward()
    assert m.tok_emb.weight.grad.is_sparse
    assert fgm.attack()
    torch.testing.assert_close((m.tok_emb.weight - W0).norm(), torch.tensor(0.5), rtol=1e-5, atol=1e-6)
    fgm.restore(); assert torch.equal(m.tok_emb.weight, W0)

    m, x, y, lf = setup()
    m = m.to(torch.bfloat16)
    fgm = FGM(m, epsilon=0.5)
    W0 = m.tok_emb.weight.detach().clone()
    lf(m(x).float(), y).backward()
    assert fgm.attack()
    assert m.tok_emb.weight.dtype == torch.bfloat16
    torch.testing.assert_close((m.tok_emb.weight - W0).float().norm(), torch.tensor(0.5), rtol=0.05, atol=0.0)
    fgm.restore(); assert torch.equal(m.tok_emb.weight, W0)


def test_bad_arguments():
    m = Bag()
    with pytest.raises(ValueError, match=r"no trainable parameter name contains emb_name='word_embeddings'.*tok_emb\.weight"):
        FGM(m, emb_name="word_embeddings")
    m.tok_emb.weight.requires_grad_(False)           # a frozen table cannot be attacked
    with pytest.raises(ValueError, match="no trainable parameter name contains"):
        FGM(m)
    for eps in [0, -1.0, float("nan"), float("inf"), "1", True]:
        with pytest.raises(ValueError, match="epsilon must be a finite number > 0"):
            FGM(Bag(), epsilon=eps)
    with pytest.raises(ValueError, match="emb_name must be a non-empty string"):
        FGM(Bag(), emb_name="")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        FGM("model")


def test_switch_transformer_token_table_only():
    tr = pytest.importorskip("moe_course.transformer")
    torch.manual_seed(0)
    m = tr.SwitchTransformerClassifier(vocab_size=40, max_len=8, d_model=16, n_heads=2, d_ff=32, n_layers=1,
                                       num_experts=2, dropout=0.0)
    x, y = data(V=40)
    fgm = FGM(m, epsilon=1.0)
    before = state(m)
    nn.functional.cross_entropy(m(x).logits, y).backward()
    assert fgm.attack()
    assert list(fgm.backup) == ["embedding.tok_emb.weight"]
    assert torch.equal(m.embedding.pos_emb.weight, before["embedding.pos_emb.weight"])
    fgm.restore()
    for k, v in m.state_dict().items(): assert torch.equal(v, before[k]), k
