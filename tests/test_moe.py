"Tests for moe_course.moe: stacked experts, exact capacity drops, the three dispatches agree, padding, NaN, diagnostics, compile."
import math

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

from moe_course.routing import expert_capacity
from moe_course.moe import (DISPATCH, GroupedExperts, ResNetFeedForward, Switch, SwitchDiagnostics, dispatch_mode,
                            moe_dispatch, plot_routing_load)
import moe_course.routers  # noqa: F401  registers chapter `routers`' routers (top-k, expert choice, bias) with Switch
from helpers import routing_load

ROUTERS = ["switch", "random", "hash"]


def test_resnet_feedforward_formula():
    torch.manual_seed(0)
    ff = ResNetFeedForward(6, 10, dropout=0.5).eval()
    x = torch.randn(4, 6)
    ref = F.relu(F.relu(x @ ff.fc1.weight.T + ff.fc1.bias) @ ff.fc2.weight.T + ff.fc2.bias) + x
    torch.testing.assert_close(ff(x), ref)
    assert sum(p.numel() for p in ff.parameters()) == 2 * 6 * 10 + 10 + 6
    ff.train(); torch.manual_seed(1)
    assert not torch.allclose(ff(x), ref)                 # dropout acts in training


def test_grouped_experts_are_n_resnet_feedforwards():
    torch.manual_seed(3); ex = GroupedExperts(6, 10, 4)
    torch.manual_seed(3); ffs = [ResNetFeedForward(6, 10) for _ in range(4)]     # the same seed draws the same weights
    assert sum(p.numel() for p in ex.parameters()) == sum(p.numel() for f in ffs for p in f.parameters())
    assert [tuple(p.shape) for p in ex.parameters()] == [(4, 6, 10), (4, 10), (4, 10, 6), (4, 6)]
    x = torch.randn(4, 5, 6)
    with torch.no_grad():
        ref = torch.stack([ffs[i](x[i]) for i in range(4)])
        for i in range(4): torch.testing.assert_close(ex.expert(i, x[i]), ref[i])
        torch.testing.assert_close(ex.padded(x), ref); torch.testing.assert_close(ex.einsum(x), ref)
        torch.testing.assert_close(ex(x.reshape(20, 6), torch.tensor([5, 10, 15, 20])), ref.reshape(20, 6))
        other = GroupedExperts(6, 10, 4).load_experts(ffs)
        torch.testing.assert_close(other.w2, ex.w2)


def test_grouped_experts_dropout_only_in_training():
    torch.manual_seed(0); ex = GroupedExperts(6, 10, 2, dropout=0.5)
    x = torch.randn(2, 3, 6)
    assert torch.equal(ex.eval().padded(x), ex.padded(x))
    assert not torch.equal(ex.train().padded(x), ex.padded(x))


def hand_made(dispatch, cf=1.0):
    "2 experts, identity router: token t goes to argmax(x_t)."
    sw = Switch(2, 4, num_experts=2, capacity_factor=cf, dispatch=dispatch)
    with torch.no_grad():
        sw.router.weight.copy_(torch.eye(2))
    return sw


@pytest.mark.parametrize("dispatch", DISPATCH + ("index",))
def test_hand_made_drops_are_exact(dispatch):
    x = torch.tensor([[3., 0], [2, 0], [4, 1], [1, 0], [5, 0], [0, 2]])
    sw = hand_made(dispatch)
    y, d = sw(x[None])
    assert d.capacity.item() == math.ceil(1.0 * 6 / 2) == 3
    assert d.tokens_per_expert.tolist() == [5, 1] and d.kept_per_expert.tolist() == [3, 1] and d.dropped.item() == 2
    assert d.num_tokens.item() == 6 and d.drop_fraction.item() == pytest.approx(2 / 6)
    assert d.kept.tolist() == [True, True, True, False, False, True] and d.expert_index.tolist() == [0, 0, 0, 0, 0, 1]
    y = y[0].detach()
    assert torch.equal(y[3], torch.zeros(2)) and torch.equal(y[4], torch.zeros(2))   # dropped: zero output
    probs = torch.softmax(x @ torch.eye(2), -1)
    torch.testing.assert_close(d.gate, probs.max(-1).values)
    for t, i in [(0, 0), (1, 0), (2, 0), (5, 1)]:                                     # kept: g * E_i(x)
        torch.testing.assert_close(y[t], (probs[t, i] * sw.experts.expert(i, x[t])).detach(), rtol=1e-6, atol=1e-6)
    # with a padding token first, padding takes no capacity: token 4 is still dropped, token 3 now fits
    mask = torch.tensor([[False, True, True, True, True, True]])
    _, d2 = sw(x[None], mask)
    assert d2.num_tokens.item() == 5 and d2.capacity.item() == 3 and d2.tokens_per_expert.tolist() == [4, 1]
    assert d2.dropped.item() == 1 and d2.expert_index[0].item() == -1 and d2.gate[0].item() == 0 and not d2.kept[0]
    # a larger capacity factor drops nothing
    assert hand_made(dispatch, cf=2.0)(x[None])[1].dropped.item() == 0


def test_capacity_is_exact_integer_arithmetic():
    "C = ceil(1.1 * 100 / 2) = 55 exactly (the float product says 56): the layer uses the exact value."
    torch.manual_seed(0)
    sw = Switch(4, 8, 2, capacity_factor=1.1)
    with torch.no_grad(): sw.router.weight.copy_(torch.tensor([[1., 0, 0, 0], [-1, 0, 0, 0]]))
    x = torch.randn(1, 100, 4).abs()                       # every token prefers expert 0
    y, d = sw(x)
    assert d.capacity.item() == 55 == expert_capacity(100, 2, 1.1) and d.kept.sum().item() == 55
    assert d.dropped.item() == 45 and d.kept[:55].all() and not d.kept[55:].any()    # earlier tokens win
    # with 10 padding positions the capacity counts the 90 real tokens: ceil(1.1 * 90 / 2) = 50
    mask = torch.ones(1, 100, dtype=torch.bool); mask[0, -10:] = False
    assert sw(x, mask)[1].capacity.item() == 50


def run(sw, x, mask, ids):
    x = x.clone().requires_grad_()
    y, d = sw(x, mask, ids)
    (y.pow(2).sum() + y.sum() + d.aux_loss + 0.1 * d.z_loss).backward()
    return y.detach(), x.grad, {k.removeprefix("_orig_mod."): p.grad for k, p in sw.named_parameters()}, d   # compiled: _orig_mod.


@pytest.mark.parametrize("other", ["padded", "einsum"])
@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("cf", [0.5, 1.0, 4.0])
def test_dispatches_agree(other, router, cf):
    "grouped, padded and einsum: the same outputs, input gradients, parameter gradients and diagnostics."
    torch.manual_seed(0)
    a = Switch(8, 16, 4, capacity_factor=cf, router=router, dispatch="grouped", seed=5)
    b = Switch(8, 16, 4, capacity_factor=cf, router=router, dispatch=other, seed=5)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 7, 8)
    ids = torch.randint(1, 30, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.bool); mask[1, 4:] = False; mask[2, :2] = False
    ya, ga, pa, da = run(a.train(), x, mask, ids)
    yb, gb, pb, db = run(b.train(), x, mask, ids)
    torch.testing.assert_close(ya, yb)
    torch.testing.assert_close(ga, gb)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert pa[k] is not None and pb[k] is not None, k   # idle experts get zero, not missing, gradients
        torch.testing.assert_close(pa[k], pb[k], msg=k)
    for f in ("dropped", "tokens_per_expert", "capacity", "num_tokens", "expert_index", "kept"):
        assert torch.equal(getattr(da, f), getattr(db, f)), f
    torch.testing.assert_close(da.aux_loss, db.aux_loss)
    assert torch.equal(ya[~mask], torch.zeros_like(ya[~mask]))   # padding gets zero output
    if cf == 4.0: assert da.dropped.item() == 0
    if router != "switch":
        assert da.aux_loss.item() == 0 and da.z_loss.item() == 0
        assert ga[mask].abs().sum() > 0


@pytest.mark.parametrize("dispatch", DISPATCH)
@pytest.mark.parametrize("router", ROUTERS)
def test_padding_does_not_change_real_tokens(dispatch, router):
    torch.manual_seed(0)
    sw = Switch(8, 16, 4, capacity_factor=1.0, router=router, dispatch=dispatch).eval()
    x = torch.randn(1, 10, 8); ids = torch.randint(1, 30, (1, 10))
    y, d = sw(x, None, ids)
    # interleave padding rows with garbage values: real tokens keep their output, padding takes no capacity
    xp = torch.cat([x, 50 * torch.randn(1, 6, 8)], 1)[:, [0, 10, 1, 2, 11, 3, 4, 5, 12, 13, 6, 7, 8, 14, 15, 9]]
    mp = torch.ones(1, 16, dtype=torch.bool); mp[0, [1, 4, 8, 9, 13, 14]] = False
    idp = torch.zeros(1, 16, dtype=torch.long); idp[mp] = ids[0]
    yp, dp = sw(xp, mp, idp)
    torch.testing.assert_close(yp[mp], y[0])     # random routing: the k-th real token takes the k-th draw
    assert dp.dropped == d.dropped and torch.equal(dp.tokens_per_expert, d.tokens_per_expert)
    if router == "switch": torch.testing.assert_close(dp.aux_loss, d.aux_loss); torch.testing.assert_close(dp.z_loss, d.z_loss)
    assert dp.capacity == d.capacity and dp.num_tokens.item() == 10
    assert torch.equal(dp.kept[mp[0]], d.kept) and torch.equal(dp.expert_index[mp[0]], d.expert_index)
    assert torch.equal(yp[~mp], torch.zeros(6, 8))


@pytest.mark.parametrize("dispatch", DISPATCH)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_token_changes_no_other_output(dispatch, bad):
    "A NaN/inf in one real token's input changes no other token's output (einsum's 0 * NaN once poisoned all)."
    torch.manual_seed(0)
    sw = Switch(8, 16, 4, capacity_factor=4.0, dispatch=dispatch).eval()   # room for all: nothing is dropped
    x = torch.randn(2, 6, 8)
    y, _ = sw(x)
    xb = x.clone(); xb[0, 2, 3] = bad
    yb, db = sw(xb)
    others = torch.ones(2, 6, dtype=torch.bool); others[0, 2] = False
    torch.testing.assert_close(yb[others], y[others])
    assert torch.isfinite(yb[others]).all() and db.dropped.item() == 0


@pytest.mark.parametrize("dispatch", DISPATCH)
@pytest.mark.parametrize("router", ROUTERS)
def test_nonfinite_padding_never_reaches_losses_or_diagnostics(dispatch, router):
    "NaN/inf at padding positions: real outputs, both losses, every diagnostic and every gradient stay as without them."
    torch.manual_seed(0)
    sw = Switch(8, 16, 4, capacity_factor=1.0, router=router, dispatch=dispatch).train()
    x = torch.randn(2, 7, 8); ids = torch.randint(1, 30, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.bool); mask[0, 5:] = False; mask[1, 0] = False
    xb = x.clone(); xb[0, 5] = float("nan"); xb[0, 6] = float("inf"); xb[1, 0] = -float("inf")
    outs = []
    for inp in (x, xb):
        sw.router.manual_seed(0)
        y, g, p, d = run(sw, inp, mask, ids)
        outs.append((y, g, p, d))
    (y, g, p, d), (yb, gb, pb, dbad) = outs
    torch.testing.assert_close(yb[mask], y[mask]); assert torch.equal(yb[~mask], torch.zeros_like(yb[~mask]))
    torch.testing.assert_close(gb[mask], g[mask])
    for k in p: torch.testing.assert_close(pb[k], p[k], msg=k)         # the weights' gradients too
    for f in ("tokens_per_expert", "dropped", "capacity", "num_tokens", "expert_index", "kept"):
        assert torch.equal(getattr(dbad, f), getattr(d, f)), f
    for f in ("router_prob_mean", "aux_loss", "z_loss", "gate"):
        assert torch.isfinite(getattr(dbad, f)).all(), f
        torch.testing.assert_close(getattr(dbad, f), getattr(d, f), msg=f)


@pytest.mark.parametrize("mode", DISPATCH)
def test_moe_dispatch_flat_assignments(mode):
    "Several assignments per token (a top-2 layout, first choices listed first): sum of g E(x) over the kept ones."
    torch.manual_seed(0)
    ex = GroupedExperts(8, 16, 3)
    n = 10; x = torch.randn(n, 8, requires_grad=True)
    e = torch.randint(0, 3, (2, n)); e[1] = (e[0] + 1) % 3                   # a second, different choice
    g = torch.rand(2, n); mask = torch.ones(2, n, dtype=torch.bool); mask[:, 7] = False
    tok = torch.arange(n).repeat(2)
    out = moe_dispatch(x, ex, e.reshape(-1), g.reshape(-1), 5, mask.reshape(-1), token_index=tok, mode=mode)
    ref, used = torch.zeros(n, 8), [0, 0, 0]
    for a in range(2 * n):                                                  # the definition, one assignment at a time
        t, i = tok[a].item(), e.reshape(-1)[a].item()
        if mask.reshape(-1)[a] and used[i] < 5:
            used[i] += 1; ref[t] = ref[t] + g.reshape(-1)[a] * ex.expert(i, x[t])
    torch.testing.assert_close(out.y, ref)
    assert out.keep.sum().item() == sum(used) and out.tokens_per_expert.tolist() == torch.bincount(e[mask], minlength=3).tolist()
    gx, = torch.autograd.grad(out.y.square().sum(), x); gr, = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(gx, gr)


def test_moe_dispatch_bad_arguments():
    ex = GroupedExperts(4, 8, 2)
    with pytest.raises(ValueError, match="static `buffer`"):
        moe_dispatch(torch.randn(3, 4), ex, torch.tensor([0, 1, 0]), torch.ones(3), torch.tensor(2), mode="padded")
    with pytest.raises(ValueError, match="dispatch must be one of"):
        dispatch_mode("loop")
    assert dispatch_mode("index") == "grouped"


def test_diagnostics_are_consistent_tensors():
    torch.manual_seed(0)
    sw = Switch(8, 16, 4, capacity_factor=0.75)
    y, d = sw(torch.randn(2, 20, 8))
    assert isinstance(d, SwitchDiagnostics)
    for f in ("dropped", "capacity", "num_tokens"): assert torch.is_tensor(getattr(d, f)) and getattr(d, f).dim() == 0, f
    assert d.tokens_per_expert.sum().item() == 40 and d.capacity.item() == math.ceil(0.75 * 40 / 4)
    assert d.dropped == (d.tokens_per_expert - d.capacity).clamp(min=0).sum()
    assert d.router_prob_mean.sum().item() == pytest.approx(1.0, abs=1e-5) and not d.router_prob_mean.requires_grad
    assert d.aux_loss.requires_grad and d.z_loss.requires_grad
    assert (y.abs().sum(-1) == 0).sum() == d.dropped
    assert d.expert_index.shape == d.gate.shape == d.kept.shape == (40,) and d.kept.dtype == torch.bool
    assert torch.equal(d.kept, y.reshape(40, 8).abs().sum(-1) > 0) and not d.gate.requires_grad
    assert torch.equal(torch.bincount(d.expert_index, minlength=4), d.tokens_per_expert)


def test_router_gets_gradient_through_gate():
    torch.manual_seed(0)
    sw = Switch(8, 16, 4)
    y, _ = sw(torch.randn(2, 5, 8))
    y.sum().backward()
    assert sw.router.weight.grad is not None and sw.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dispatch", DISPATCH)
def test_single_expert(dispatch):
    torch.manual_seed(0)
    sw = Switch(8, 16, 1, capacity_factor=1.0, dispatch=dispatch)
    x = torch.randn(2, 5, 8)
    y, d = sw(x)
    assert d.dropped.item() == 0 and d.aux_loss.item() == pytest.approx(1.0)
    torch.testing.assert_close(y, sw.experts.expert(0, x))      # gate = softmax over one expert = 1


@pytest.mark.parametrize("dispatch", DISPATCH)
def test_bf16_autocast(dispatch):
    torch.manual_seed(0)
    sw = Switch(16, 32, 4, dispatch=dispatch)
    x = torch.randn(2, 8, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, d = sw(x, torch.ones(2, 8, dtype=torch.bool))
    assert torch.isfinite(y.float()).all() and d.aux_loss.dtype == torch.float32
    (y.float().sum() + d.aux_loss).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("dispatch", DISPATCH)
def test_compiles_fullgraph_forward_backward(router, dispatch):
    "No host sync, no data-dependent Python: the layer compiles to one graph (aot_eager) and matches eager."
    torch.manual_seed(0)
    sw = Switch(8, 16, 4, capacity_factor=1.0, router=router, dispatch=dispatch).train()
    x = torch.randn(2, 6, 8); ids = torch.randint(1, 30, (2, 6)); mask = torch.ones(2, 6, dtype=torch.bool); mask[1, 4:] = False
    torch._dynamo.reset()
    compiled = torch.compile(sw, fullgraph=True, backend="aot_eager")
    sw.router.manual_seed(0); yc, gc, pc, dc = run(compiled, x, mask, ids)
    sw.router.manual_seed(0); ye, ge, pe, de = run(sw, x, mask, ids)
    torch.testing.assert_close(yc, ye); torch.testing.assert_close(gc, ge)
    for k in pe: torch.testing.assert_close(pc[k], pe[k], msg=k)
    assert torch.equal(dc.tokens_per_expert, de.tokens_per_expert) and torch.equal(dc.kept, de.kept)


def test_compiles_with_inductor():
    "The default backend generates code for the whole layer (the grouped GEMM stays one opaque CPU kernel)."
    torch.manual_seed(0)
    sw = Switch(8, 16, 4, capacity_factor=1.0)
    x = torch.randn(2, 6, 8)
    torch._dynamo.reset()
    compiled = torch.compile(sw, fullgraph=True)
    yc, gc, pc, _ = run(compiled, x, None, None)
    ye, ge, pe, _ = run(sw, x, None, None)
    torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-5); torch.testing.assert_close(gc, ge, rtol=1e-5, atol=1e-5)
    for k in pe: torch.testing.assert_close(pc[k], pe[k], rtol=1e-5, atol=1e-5, msg=k)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dispatch"):
        Switch(8, 16, 4, dispatch="loop")
    with pytest.raises(ValueError, match="capacity_factor"):
        Switch(8, 16, 4, capacity_factor=0)
    with pytest.raises(ValueError, match="token_ids"):
        Switch(8, 16, 4, router="hash")(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="mask shape"):
        Switch(8, 16, 4)(torch.randn(1, 3, 8), torch.ones(1, 4, dtype=torch.bool))


def test_load_plot_of_the_explorer_data():
    "The explorer's synthetic data (tests/helpers.py; a notebook-only cell in chapter moe) and the library's load plot."
    d = routing_load(num_experts=4, capacity_factor=1.0)
    assert d.tokens_per_expert.sum().item() == 512
    assert routing_load(capacity_factor=8.0).dropped.item() == 0
    assert torch.equal(routing_load(temperature=0.2).tokens_per_expert, d.tokens_per_expert)
    fig = plot_routing_load(routing_load(num_experts=3, capacity_factor=0.5))
    assert isinstance(fig, plt.Figure) and len(fig.axes[0].patches) == 6   # processed + dropped bars
    plt.close("all")


def switch_by_loop(sw, x, mask, token_ids):
    "Independent reference: one token at a time, earlier tokens win capacity."
    xf, m = x.reshape(-1, x.shape[-1]), mask.reshape(-1)
    r = sw.router(xf, token_ids.reshape(-1), m)
    C = expert_capacity(int(m.sum()), sw.num_experts, sw.capacity_factor)
    used, rows = [0] * sw.num_experts, []
    for t in range(len(xf)):
        i = int(r.expert_index[t])
        if m[t] and used[i] < C:
            used[i] += 1
            rows.append(r.gate[t] * sw.experts.expert(i, xf[t]))
        else: rows.append(torch.zeros_like(xf[t]))
    return torch.stack(rows).reshape(x.shape)


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("dispatch", DISPATCH)
def test_matches_token_loop(router, dispatch):
    torch.manual_seed(0)
    sw = Switch(8, 16, 3, capacity_factor=0.6, router=router, dispatch=dispatch).eval()
    x = torch.randn(2, 9, 8); ids = torch.randint(1, 20, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool); mask[0, 7:] = False
    with torch.no_grad():
        y, d = sw(x, mask, ids)
        torch.testing.assert_close(y, switch_by_loop(sw, x, mask, ids))
    assert d.dropped.item() > 0


# --- where the gate goes: gate="expert" (the reference, g (F(x) + x)) against gate="ffn" (x + g F(x)) ---
def _gate_pair(dispatch, router="switch", n_exp=4, cf=1.0):
    torch.manual_seed(0)
    a = Switch(8, 16, n_exp, capacity_factor=cf, router=router, dispatch=dispatch, seed=2).eval()
    b = Switch(8, 16, n_exp, capacity_factor=cf, router=router, dispatch=dispatch, seed=2, gate="ffn").eval()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("dispatch", DISPATCH)
@pytest.mark.parametrize("router", ["switch", "random", "hash"])
def test_gate_on_ffn_moves_only_the_skip(dispatch, router):
    a, b = _gate_pair(dispatch, router)
    x = torch.randn(3, 7, 8); mask = torch.rand(3, 7) < 0.8; ids = torch.randint(1, 50, (3, 7))
    (ya, da), (yb, db) = a(x, mask, ids), b(x, mask, ids)
    assert torch.equal(da.expert_index, db.expert_index) and torch.equal(da.kept, db.kept)
    assert int(da.dropped) > 0, "the check needs at least one dropped token"
    k, g, v = da.kept.view(3, 7, 1), da.gate.view(3, 7, 1), mask[..., None]
    # kept: g (F + x) - (x + g F) = (g - 1) x;  dropped: 0 - x;  padding: 0 for both
    torch.testing.assert_close(ya - yb, torch.where(k, (g - 1) * x, torch.where(v, -x, torch.zeros_like(x))), atol=1e-5, rtol=1e-5)
    assert torch.equal(yb[~mask], torch.zeros_like(yb[~mask]))
    torch.testing.assert_close(yb[v.expand_as(x) & ~k.expand_as(x)], x[v.expand_as(x) & ~k.expand_as(x)])  # dropped: x itself


@pytest.mark.parametrize("dispatch", DISPATCH)
def test_gate_on_ffn_with_one_expert_is_the_dense_layer(dispatch):
    torch.manual_seed(1)
    ff, sw = ResNetFeedForward(8, 16).eval(), Switch(8, 16, 1, dispatch=dispatch, gate="ffn").eval()
    sw.experts.load_experts([ff])
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(sw(x)[0], ff(x), atol=1e-6, rtol=1e-6)
    # the reference gate gives the same here too (g = 1), so the two differ only through g < 1 and drops
    ref = Switch(8, 16, 1, dispatch=dispatch).eval(); ref.experts.load_experts([ff])
    torch.testing.assert_close(ref(x)[0], ff(x), atol=1e-6, rtol=1e-6)


def test_gate_on_ffn_gradients_agree_across_dispatches():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8); mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]]).bool()
    grads = {}
    for d in DISPATCH:
        torch.manual_seed(3); sw = Switch(8, 16, 4, capacity_factor=1.0, dispatch=d, gate="ffn")
        xi = x.clone().requires_grad_(True)
        y, diag = sw(xi, mask); (y.square().sum() + diag.aux_loss).backward()
        grads[d] = [xi.grad] + [p.grad for p in sw.parameters()]
    for d in DISPATCH[1:]:
        for g1, g2 in zip(grads["grouped"], grads[d]): torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-5)


def test_gate_bad_value_and_config_choice():
    with pytest.raises(ValueError, match="gate"): Switch(8, 16, 4, gate="both")
    from moe_course.config import CHOICES, get_config
    from moe_course.transformer import SwitchTransformerClassifier
    assert CHOICES["gate"] == ("expert", "ffn") and get_config().gate == "expert"
    m = SwitchTransformerClassifier(50, max_len=8, d_model=8, n_heads=2, d_ff=16, n_layers=2, num_experts=4, gate="ffn")
    assert all(b.ffn.gate == "ffn" and not b.ffn.experts.skip for b in m.blocks)


@pytest.mark.parametrize("kw", [dict(top_k=2), dict(router="expert_choice"), dict(balancing="bias", top_k=2)])
def test_gate_on_ffn_with_the_routers_after_switch(kw):
    "y_expert - y_ffn = (sum of the token's kept gates - 1) x for every real token, whatever the router."
    torch.manual_seed(0)
    a = Switch(8, 16, 4, capacity_factor=1.0, **kw).eval()
    b = Switch(8, 16, 4, capacity_factor=1.0, gate="ffn", **kw).eval(); b.load_state_dict(a.state_dict())
    x = torch.randn(2, 9, 8); mask = torch.rand(2, 9) < 0.8; mask[:, 0] = True
    (ya, da), (yb, db) = a(x, mask), b(x, mask)
    g, v = da.gate.view(2, 9, 1), mask[..., None]
    torch.testing.assert_close(ya - yb, torch.where(v, (g - 1) * x, torch.zeros_like(x)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dispatch", ["grouped", "padded", "einsum"])
def test_empty_batch_and_bf16_input_with_fp32_weights(dispatch):
    sw = Switch(8, 16, 4, dispatch=dispatch)
    y, d = sw(torch.randn(0, 8))
    assert y.shape == (0, 8) and int(d.dropped) == 0
    x = torch.randn(2, 5, 8)
    y16, _ = sw(x.bfloat16())                                     # bf16 activations, fp32 weights: as grouped does
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), sw(x.bfloat16().float())[0], atol=0.05, rtol=0.05)
