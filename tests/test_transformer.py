"Tests for moe_course.transformer: attention, blocks, the classifier and parameter counting."
import pytest
import torch
import torch.nn.functional as F

from moe_course.moe import Switch
from moe_course.transformer import (ClassifierOutput, MultiHeadSelfAttention, SwitchTransformerClassifier,
                                    TransformerBlock, count_parameters)

KW = dict(vocab_size=50, max_len=24, d_model=16, n_heads=2, d_ff=32, n_layers=2)


def test_attention_matches_explicit_softmax_and_param_count():
    torch.manual_seed(0)
    att = MultiHeadSelfAttention(16, 4).eval()
    assert sum(p.numel() for p in att.parameters()) == 4 * 16 ** 2 + 4 * 16
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6]).bool()
    y = att(x, mask)
    q, k, v = att.qkv(x).view(2, 6, 3, 4, 4).permute(2, 0, 3, 1, 4)
    s = q @ k.transpose(-1, -2) / 2.0 + torch.where(mask, 0.0, float("-inf"))[:, None, None, :]
    torch.testing.assert_close(y, att.out((s.softmax(-1) @ v).transpose(1, 2).reshape(2, 6, 16)))
    x2 = x.clone(); x2[0, 4:] = 1e3
    torch.testing.assert_close(att(x2, mask)[0, :4], y[0, :4])
    assert torch.isfinite(att(x, torch.zeros(2, 6, dtype=torch.bool))).all()
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadSelfAttention(16, 3)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_block_residual_and_dropped_tokens_pass_through(norm):
    torch.manual_seed(0)
    blk = TransformerBlock(16, 2, 32, num_experts=4, capacity_factor=0.25, norm=norm).eval()
    x = torch.randn(2, 8, 16); mask = torch.ones(2, 8, dtype=torch.bool)
    out, d = blk(x, mask)
    assert d.dropped > 0
    a = x + blk.attn(blk.ln1(x), mask) if norm == "pre" else blk.ln1(x + blk.attn(x, mask))
    y, _ = blk.ffn(blk.ln2(a) if norm == "pre" else a, mask)
    expected = a + y if norm == "pre" else blk.ln2(a + y)
    torch.testing.assert_close(out, expected)
    dropped = y.abs().sum(-1) == 0
    assert dropped.sum().item() == d.dropped
    passthrough = a if norm == "pre" else blk.ln2(a)
    torch.testing.assert_close(out[dropped], passthrough[dropped])   # dropped tokens ride the residual


def test_dense_block_uses_resnet_ffn():
    blk = TransformerBlock(16, 2, 32, num_experts=1)
    assert not isinstance(blk.ffn, Switch)
    out, d = blk(torch.randn(1, 4, 16))
    assert d is None and out.shape == (1, 4, 16)
    with pytest.raises(ValueError, match="norm"):
        TransformerBlock(16, 2, 32, norm="sandwich")


@pytest.mark.parametrize("router", ["switch", "random", "hash"])
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_classifier_padding_invariance(router, norm):
    torch.manual_seed(0)
    model = SwitchTransformerClassifier(**KW, num_classes=3, num_experts=4, router=router, norm=norm).eval()
    ids = torch.randint(1, 50, (2, 9)); ids[0, 6:] = 0
    out = model(ids)
    assert isinstance(out, ClassifierOutput) and out.logits.shape == (2, 3) and len(out.diagnostics) == 2
    padded = torch.cat([F.pad(ids, (0, 5)), torch.zeros(1, 14, dtype=torch.long)])   # longer rows + empty row
    out2 = model(padded)
    assert torch.isfinite(out2.logits).all()
    torch.testing.assert_close(out2.logits[:2], out.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out2.aux_loss, out.aux_loss)
    # an explicit attention_mask equal to ids != pad gives the same result
    torch.testing.assert_close(model(ids, ids.ne(0)).logits, out.logits)


def test_classifier_losses_summed_over_layers():
    torch.manual_seed(0)
    model = SwitchTransformerClassifier(**KW, num_experts=4)
    out = model(torch.randint(1, 50, (3, 10)))
    torch.testing.assert_close(out.aux_loss, sum(d.aux_loss for d in out.diagnostics))
    torch.testing.assert_close(out.z_loss, sum(d.z_loss for d in out.diagnostics))
    (F.cross_entropy(out.logits, torch.tensor([0, 1, 0])) + 0.01 * out.aux_loss + 0.001 * out.z_loss).backward()
    assert all(b.ffn.router.weight.grad is not None for b in model.blocks)
    dense = SwitchTransformerClassifier(**KW, num_experts=1)(torch.randint(1, 50, (3, 10)))
    assert dense.aux_loss.item() == 0 and dense.z_loss.item() == 0 and dense.diagnostics == []


@pytest.mark.parametrize("dispatch", ["padded", "einsum", "index"])
def test_classifier_dispatches_agree(dispatch):
    "grouped (the default) vs padded, einsum and the old name 'index': same logits and gradients."
    torch.manual_seed(0)
    a = SwitchTransformerClassifier(**KW, num_experts=4, capacity_factor=1.0).eval()
    b = SwitchTransformerClassifier(**KW, num_experts=4, capacity_factor=1.0, dispatch=dispatch).eval()
    b.load_state_dict(a.state_dict())
    assert a.blocks[0].ffn.dispatch == "grouped" and b.blocks[0].ffn.dispatch == ("grouped" if dispatch == "index" else dispatch)
    ids = torch.randint(0, 50, (3, 12))
    la, lb = a(ids).logits, b(ids).logits
    torch.testing.assert_close(la, lb)
    la.square().sum().backward(); lb.square().sum().backward()
    for (k, p), q in zip(a.named_parameters(), b.parameters()): torch.testing.assert_close(p.grad, q.grad, msg=k)


@pytest.mark.parametrize("router", ["switch", "random", "hash"])
def test_classifier_compiles_fullgraph_forward_backward(router):
    "The whole classifier is one graph (no host sync, no data-dependent Python); compiled == eager, with padding."
    torch.manual_seed(0)
    model = SwitchTransformerClassifier(**KW, num_experts=4, router=router, dropout=0.0).train()
    ids = torch.randint(1, 50, (3, 10)); ids[0, 7:] = 0; ids[2, 3:] = 0
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    grads = []
    for m in (compiled, model):
        for b in model.blocks: b.ffn.router.manual_seed(0)
        out = m(ids)
        (F.cross_entropy(out.logits, torch.tensor([0, 1, 0])) + 0.01 * out.aux_loss).backward()
        grads.append((out.logits.detach(), out.aux_loss.detach(), [p.grad.clone() for p in model.parameters()],
                      [d.tokens_per_expert for d in out.diagnostics]))
        model.zero_grad()
    (lc, ac, gc, tc), (le, ae, ge, te) = grads
    torch.testing.assert_close(lc, le); torch.testing.assert_close(ac, ae)
    for p, q in zip(gc, ge): torch.testing.assert_close(p, q)
    assert all(torch.equal(x, y) for x, y in zip(tc, te))


def test_classifier_bf16_autocast_forward_backward():
    torch.manual_seed(0)
    model = SwitchTransformerClassifier(**KW, num_experts=4)
    ids = torch.randint(1, 50, (2, 12)); ids[1, 8:] = 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids)
        loss = F.cross_entropy(out.logits.float(), torch.tensor([0, 1])) + 0.01 * out.aux_loss
    loss.backward()
    assert torch.isfinite(loss) and out.aux_loss.dtype == torch.float32
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_classifier_bad_input():
    model = SwitchTransformerClassifier(**KW)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.ones(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.ones(25, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("n_layers", [1, 3])
def test_count_parameters(n_layers):
    kw = dict(KW, n_layers=n_layers)
    N, d = 4, kw["d_model"]
    moe = SwitchTransformerClassifier(**kw, num_experts=N)
    dense = SwitchTransformerClassifier(**kw, num_experts=1)
    c, cd = count_parameters(moe), count_parameters(dense)
    assert c["total"] == sum(p.numel() for p in moe.parameters())
    assert cd == dict(total=sum(p.numel() for p in dense.parameters()), active=cd["total"])
    expert = 2 * d * kw["d_ff"] + kw["d_ff"] + d
    assert c["total"] == cd["total"] + n_layers * ((N - 1) * expert + d * N)
    assert c["active"] == cd["total"] + n_layers * d * N           # one expert + the router per layer
    for router in ("random", "hash"):
        assert count_parameters(SwitchTransformerClassifier(**kw, num_experts=N, router=router))["active"] == cd["total"]
    assert count_parameters(Switch(d, 32, N)) == dict(total=N * (2 * d * 32 + 32 + d) + d * N, active=(2 * d * 32 + 32 + d) + d * N)
