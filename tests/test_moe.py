"Tests for moe_course.moe: the expert, exact capacity drops, einsum == index dispatch, padding, diagnostics."
import math

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

from moe_course.routing import expert_capacity
from moe_course.moe import ResNetFeedForward, Switch, SwitchDiagnostics, plot_routing_load, routing_explorer, routing_load

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


def hand_made(dispatch, cf=1.0):
    "2 experts, identity router: token t goes to argmax(x_t)."
    sw = Switch(2, 4, num_experts=2, capacity_factor=cf, dispatch=dispatch)
    with torch.no_grad():
        sw.router.weight.copy_(torch.eye(2))
    return sw


@pytest.mark.parametrize("dispatch", ["index", "einsum"])
def test_hand_made_drops_are_exact(dispatch):
    x = torch.tensor([[3., 0], [2, 0], [4, 1], [1, 0], [5, 0], [0, 2]])
    sw = hand_made(dispatch)
    y, d = sw(x[None])
    assert d.capacity == math.ceil(1.0 * 6 / 2) == 3
    assert d.tokens_per_expert.tolist() == [5, 1] and d.kept_per_expert.tolist() == [3, 1] and d.dropped == 2
    assert d.num_tokens == 6 and d.drop_fraction == pytest.approx(2 / 6)
    y = y[0]
    assert torch.equal(y[3], torch.zeros(2)) and torch.equal(y[4], torch.zeros(2))   # dropped: zero output
    probs = torch.softmax(x @ torch.eye(2), -1)
    for t, i in [(0, 0), (1, 0), (2, 0), (5, 1)]:                                     # kept: g * E_i(x)
        torch.testing.assert_close(y[t], probs[t, i] * sw.experts[i](x[t]), rtol=1e-6, atol=1e-6)
    # with a padding token first, padding takes no capacity: token 4 is still dropped, token 3 now fits
    mask = torch.tensor([[False, True, True, True, True, True]])
    _, d2 = sw(x[None], mask)
    assert d2.num_tokens == 5 and d2.capacity == 3 and d2.tokens_per_expert.tolist() == [4, 1] and d2.dropped == 1
    # a larger capacity factor drops nothing
    assert hand_made(dispatch, cf=2.0)(x[None])[1].dropped == 0


def run(sw, x, mask, ids):
    x = x.clone().requires_grad_()
    y, d = sw(x, mask, ids)
    (y.pow(2).sum() + y.sum() + d.aux_loss + 0.1 * d.z_loss).backward()
    return y.detach(), x.grad, {k: p.grad for k, p in sw.named_parameters()}, d


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("cf", [0.5, 1.0, 4.0])
def test_einsum_and_index_agree(router, cf):
    torch.manual_seed(0)
    a = Switch(8, 16, 4, capacity_factor=cf, router=router, dispatch="index", seed=5)
    b = Switch(8, 16, 4, capacity_factor=cf, router=router, dispatch="einsum", seed=5)
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
    assert da.dropped == db.dropped and torch.equal(da.tokens_per_expert, db.tokens_per_expert)
    torch.testing.assert_close(da.aux_loss, db.aux_loss)
    assert torch.equal(ya[~mask], torch.zeros_like(ya[~mask]))   # padding gets zero output
    if cf == 4.0: assert da.dropped == 0
    if router != "switch":
        assert da.aux_loss.item() == 0 and da.z_loss.item() == 0
        assert ga[mask].abs().sum() > 0


@pytest.mark.parametrize("dispatch", ["index", "einsum"])
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
    assert dp.capacity == d.capacity and dp.num_tokens == 10
    assert torch.equal(yp[~mp], torch.zeros(6, 8))


def test_diagnostics_are_consistent():
    torch.manual_seed(0)
    sw = Switch(8, 16, 4, capacity_factor=0.75)
    y, d = sw(torch.randn(2, 20, 8))
    assert isinstance(d, SwitchDiagnostics)
    assert d.tokens_per_expert.sum().item() == 40 and d.capacity == math.ceil(0.75 * 40 / 4)
    assert d.dropped == (d.tokens_per_expert - d.capacity).clamp(min=0).sum().item()
    assert d.router_prob_mean.sum().item() == pytest.approx(1.0, abs=1e-5) and not d.router_prob_mean.requires_grad
    assert d.aux_loss.requires_grad and d.z_loss.requires_grad
    assert (y.abs().sum(-1) == 0).sum().item() == d.dropped


def test_router_gets_gradient_through_gate():
    torch.manual_seed(0)
    sw = Switch(8, 16, 4)
    y, _ = sw(torch.randn(2, 5, 8))
    y.sum().backward()
    assert sw.router.weight.grad is not None and sw.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dispatch", ["index", "einsum"])
def test_single_expert(dispatch):
    torch.manual_seed(0)
    sw = Switch(8, 16, 1, capacity_factor=1.0, dispatch=dispatch)
    x = torch.randn(2, 5, 8)
    y, d = sw(x)
    assert d.dropped == 0 and d.aux_loss.item() == pytest.approx(1.0)
    torch.testing.assert_close(y, sw.experts[0](x))      # gate = softmax over one expert = 1


def test_bf16_autocast():
    torch.manual_seed(0)
    for dispatch in ("index", "einsum"):
        sw = Switch(16, 32, 4, dispatch=dispatch)
        x = torch.randn(2, 8, 16, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, d = sw(x, torch.ones(2, 8, dtype=torch.bool))
        assert torch.isfinite(y.float()).all() and d.aux_loss.dtype == torch.float32
        (y.float().sum() + d.aux_loss).backward()
        assert torch.isfinite(x.grad).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="dispatch"):
        Switch(8, 16, 4, dispatch="loop")
    with pytest.raises(ValueError, match="capacity_factor"):
        Switch(8, 16, 4, capacity_factor=0)
    with pytest.raises(ValueError, match="token_ids"):
        Switch(8, 16, 4, router="hash")(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="mask shape"):
        Switch(8, 16, 4)(torch.randn(1, 3, 8), torch.ones(1, 4, dtype=torch.bool))


def test_explorer_renders_statically():
    d = routing_load(num_experts=4, capacity_factor=1.0)
    assert d.tokens_per_expert.sum().item() == 512
    assert routing_load(capacity_factor=8.0).dropped == 0
    assert torch.equal(routing_load(temperature=0.2).tokens_per_expert, d.tokens_per_expert)
    fig = plot_routing_load(num_experts=3, capacity_factor=0.5)
    assert isinstance(fig, plt.Figure) and len(fig.axes[0].patches) == 6   # processed + dropped bars
    fig2 = routing_explorer()            # no widget frontend under pytest -> static figure
    assert isinstance(fig2, plt.Figure)
    plt.close("all")


def test_explorer_widget_builds():
    pytest.importorskip("ipywidgets")
    w = routing_explorer(static=False)
    names = [c.description for c in w.children[:-1]]
    assert names == ["num_experts", "capacity_factor", "temperature", "jitter"]
    w.children[0].value = 8              # moving a slider re-runs the plot without error
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
            rows.append(r.gate[t] * sw.experts[i](xf[t]))
        else: rows.append(torch.zeros_like(xf[t]))
    return torch.stack(rows).reshape(x.shape)


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("dispatch", ["index", "einsum"])
def test_matches_token_loop(router, dispatch):
    torch.manual_seed(0)
    sw = Switch(8, 16, 3, capacity_factor=0.6, router=router, dispatch=dispatch).eval()
    x = torch.randn(2, 9, 8); ids = torch.randint(1, 20, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool); mask[0, 7:] = False
    with torch.no_grad():
        y, d = sw(x, mask, ids)
        torch.testing.assert_close(y, switch_by_loop(sw, x, mask, ids))
    assert d.dropped > 0
