"""Tests for moe_course.routers: top-k (vs Mixtral), expert choice, shared experts, bias balancing (vs DeepSeek-V3),
top-1 unchanged bit for bit, compile, config and CLI wiring."""
import math
import pytest, torch
from torch import nn
from helpers import padded_batch, routing_load
from moe_course.moe import Switch, GroupedExperts, SwitchDiagnostics, moe_dispatch, dispatch_mode, DISPATCH
from moe_course.routing import (Route, expert_capacity, load_balanced_loss, router_z_loss)
from moe_course.routers import (TopKRouter, ExpertChoiceRouter, expert_choice, load_balancing_loss_topk, top_k_gates,
                                fine_grained, make_router, update_router_biases, summarize_routers)

torch.set_num_threads(1)


class FrozenSwitch(nn.Module):
    "Switch exactly as it was before chapter 21 (commit 38b95d5), copied here so a change to the top-1 path shows."
    def __init__(self, d_model, d_ff, num_experts, capacity_factor=1.25, router="switch", dispatch="grouped",
                 dropout=0.0, jitter=0.0, temperature=1.0, seed=0):
        super().__init__()
        self.num_experts, self.capacity_factor, self.dispatch = num_experts, capacity_factor, dispatch_mode(dispatch)
        self.router = Route(d_model, num_experts, router, jitter=jitter, temperature=temperature, seed=seed)
        self.experts = GroupedExperts(d_model, d_ff, num_experts, dropout)

    def forward(self, x, mask=None, token_ids=None):
        shape, N = x.shape, self.num_experts
        xf = x.reshape(-1, shape[-1]); n = xf.shape[0]
        m = None if mask is None else mask.reshape(-1).to(xf.device, torch.bool)
        r = self.router(xf, None if token_ids is None else token_ids.reshape(-1), m)
        n_real = xf.new_full((), n, dtype=torch.long) if m is None else m.sum()
        C = expert_capacity(n_real, N, self.capacity_factor)
        buffer = expert_capacity(n, N, self.capacity_factor)
        y, _, keep, counts = moe_dispatch(xf, self.experts, r.expert_index, r.gate, C, m, mode=self.dispatch, buffer=buffer)
        valid = torch.ones_like(keep) if m is None else m
        if r.probs is not None:
            aux, z = load_balanced_loss(r.probs, r.expert_index, m), router_z_loss(r.logits, m)
            pmean = torch.where(valid[:, None], r.probs, 0).sum(0).detach() / n_real.clamp_min(1)
        else: aux = z = xf.new_zeros((), dtype=torch.float32); pmean = counts.float() / n_real.clamp_min(1)
        diag = SwitchDiagnostics(counts, n_real - counts.clamp(max=C).sum(), pmean, aux, z, C, n_real,
                                 torch.where(valid, r.expert_index, -1), torch.where(valid, r.gate, 0).detach(), keep)
        return y.reshape(shape), diag


def run(sw, x, mask, ids=None):
    x = x.clone().requires_grad_()
    y, d = sw(x, mask, ids)
    (y.pow(2).sum() + y.sum() + d.aux_loss + 0.1 * d.z_loss).backward()
    return y.detach(), x.grad, {k.removeprefix("_orig_mod."): p.grad for k, p in sw.named_parameters()}, d


# --- top-1 with every new option off: bit for bit today's layer -------------------------------------------------

@pytest.mark.parametrize("router", ["switch", "random", "hash"])
@pytest.mark.parametrize("dispatch", DISPATCH)
def test_top1_bit_identical_to_frozen_switch(router, dispatch):
    "Same seed -> the same parameters (RNG use unchanged); same outputs, input and parameter grads, diagnostics (torch.equal)."
    kw = dict(capacity_factor=1.0, router=router, dispatch=dispatch, dropout=0.1, seed=3)
    torch.manual_seed(0); new = Switch(8, 16, 4, **kw, top_k=1, num_shared_experts=0, balancing="aux").train()
    torch.manual_seed(0); old = FrozenSwitch(8, 16, 4, **kw).train()
    sd_new, sd_old = new.state_dict(), old.state_dict()
    assert sd_new.keys() == sd_old.keys()
    for k in sd_old: assert torch.equal(sd_new[k], sd_old[k]), k
    ids, mask = padded_batch([7, 4, 6], 30, seed=1)
    x = torch.randn(3, 7, 8)
    torch.manual_seed(1); yn, gn, pn, dn = run(new, x, mask, ids)
    torch.manual_seed(1); yo, go, po, do = run(old, x, mask, ids)
    assert yo.abs().sum() > 0 and go.abs().sum() > 0 and do.dropped.item() > 0   # not vacuous: real work, real drops
    assert torch.equal(yn, yo) and torch.equal(gn, go)
    for k in po: assert torch.equal(pn[k], po[k]), k
    for f in ("tokens_per_expert", "dropped", "router_prob_mean", "aux_loss", "z_loss", "capacity", "expert_index", "gate", "kept"):
        assert torch.equal(getattr(dn, f), getattr(do, f)), f
    assert dn.experts_per_token is None and dn.num_assignments is None
    # the comparison can fail: top-2 from the same seed gives other outputs
    if router == "switch":
        torch.manual_seed(0); y2 = Switch(8, 16, 4, **kw, top_k=2).train()(x, mask)[0]
        assert not torch.equal(y2, yo)


# --- top-k (GShard / Mixtral) -----------------------------------------------------------------------------------

def _mixtral(N=4, k=2, d=16):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    cfg = MixtralConfig(hidden_size=d, intermediate_size=32, num_local_experts=N, num_experts_per_tok=k)
    return MixtralSparseMoeBlock(cfg).eval()

@pytest.mark.parametrize("N,k", [(4, 2), (8, 2), (8, 3), (4, 1)])
def test_topk_matches_mixtral_router(N, k):
    torch.manual_seed(0); block = _mixtral(N, k)
    sw = Switch(16, 32, N, top_k=k, capacity_factor=2.0) if k > 1 else None
    router = sw.router if sw is not None else TopKRouter(16, N, top_k=1)
    with torch.no_grad(): block.gate.weight.copy_(router.weight)
    x = torch.randn(40, 16)
    _, hf_gate, hf_index = block.gate(x)
    a = router(x)
    assert torch.equal(a.expert_index.view(k, -1).T, hf_index)
    if k > 1: assert torch.equal(a.gate.view(k, -1).T, hf_gate)   # Mixtral's renormalised gates, bit for bit
    else: assert torch.equal(hf_gate, torch.ones_like(hf_gate))   # k=1: Mixtral's gate is 1; ours stays p (Switch)

def test_topk_output_matches_mixtral_choices_with_our_experts():
    "Capacity large enough: y = sum_j g_j E_{e_j}(x) at the experts and gates Mixtral's block chooses."
    torch.manual_seed(0); block = _mixtral(4, 2)
    sw = Switch(16, 32, 4, top_k=2, capacity_factor=4.0).eval()
    with torch.no_grad(): block.gate.weight.copy_(sw.router.weight)
    x = torch.randn(2, 12, 16)
    y, d = sw(x)
    assert d.dropped.item() == 0
    _, g, e = block.gate(x.reshape(-1, 16))
    ref = torch.stack([sum(g[t, j] * sw.experts.expert(int(e[t, j]), x.reshape(-1, 16)[t]) for j in range(2))
                       for t in range(24)])
    torch.testing.assert_close(y.reshape(-1, 16), ref)
    # Mixtral's own dispatch with its experts replaced by ours (E_i(x) for each chosen row) gives the same
    class Ours(nn.Module):
        def forward(self, h, top_k_index, top_k_weights):
            return sum(top_k_weights[:, j, None] * torch.stack([sw.experts.expert(int(i), r) for i, r in zip(top_k_index[:, j], h)])
                       for j in range(top_k_index.shape[1]))
    block.experts = Ours()
    torch.testing.assert_close(block(x), y)

def test_topk_load_balancing_loss_matches_transformers():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    torch.manual_seed(0)
    for k, N in [(1, 4), (2, 4), (2, 8), (3, 8)]:
        logits = torch.randn(3 * 10, N); _, mask = padded_batch([10, 6, 3], 30, seed=k)
        p = torch.softmax(logits, -1); idx = p.topk(k, -1).indices
        ours = load_balancing_loss_topk(p, idx, mask.reshape(-1))
        hf = load_balancing_loss_func((logits,), N, k, mask)
        torch.testing.assert_close(ours, hf)
        torch.testing.assert_close(load_balancing_loss_topk(p, idx), load_balancing_loss_func((logits,), N, k))
    # the layer's aux loss is this loss on its own router probabilities
    sw = Switch(8, 16, 4, top_k=2); x = torch.randn(2, 5, 8); _, mask = padded_batch([5, 3], 30)
    _, d = sw(x, mask); a = sw.router(x.reshape(-1, 8), mask.reshape(-1))
    hf = load_balancing_loss_func((a.logits,), 4, 2, mask)
    torch.testing.assert_close(d.aux_loss, hf)

def topk_by_loop(sw, x, mask):
    "Reference: every first choice is seated (in token order) before any second choice; one slot per pair."
    xf, m = x.reshape(-1, x.shape[-1]), mask.reshape(-1)
    a = sw.router(xf, m); k, n = sw.top_k, xf.shape[0]
    e, g = a.expert_index.view(k, n), a.gate.view(k, n)
    C = expert_capacity(k * int(m.sum()), sw.num_experts, sw.capacity_factor)
    used, y = [0] * sw.num_experts, torch.zeros_like(xf)
    for j in range(k):
        for t in range(n):
            i = int(e[j, t])
            if m[t] and used[i] < C:
                used[i] += 1; y[t] += g[j, t] * sw.experts.expert(i, xf[t])
    return y.reshape(x.shape)

@pytest.mark.parametrize("dispatch", DISPATCH)
@pytest.mark.parametrize("cf", [0.5, 1.0])
def test_topk_capacity_first_choices_first(dispatch, cf):
    torch.manual_seed(0)
    sw = Switch(8, 16, 4, top_k=2, capacity_factor=cf, dispatch=dispatch).eval()
    x = torch.randn(3, 9, 8); _, mask = padded_batch([9, 5, 7], 30)
    y, d = sw(x, mask)
    assert d.dropped.item() > 0                                  # capacity binds: the order matters
    torch.testing.assert_close(y, topk_by_loop(sw, x, mask))
    assert d.num_assignments.item() == 2 * mask.sum().item()
    assert torch.equal(y[~mask], torch.zeros_like(y[~mask]))

def test_padding_changes_no_real_output():
    "More padding after the real tokens: the real tokens' outputs are unchanged, for every new router."
    for kw in [dict(top_k=2), dict(router="expert_choice"), dict(num_shared_experts=1), dict(top_k=2, balancing="bias")]:
        torch.manual_seed(0); sw = Switch(8, 16, 4, capacity_factor=1.0, **kw).eval()
        x = torch.randn(1, 6, 8); xp = torch.cat([x, torch.randn(1, 5, 8) * 100], 1)
        m, mp = torch.ones(1, 6, dtype=torch.bool), torch.arange(11)[None] < 6
        torch.testing.assert_close(sw(xp, mp)[0][:, :6], sw(x, m)[0], msg=str(kw))


# --- expert choice --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dispatch", DISPATCH)
@pytest.mark.parametrize("lengths,cf", [([9, 5, 7], 1.0), ([12, 12], 2.0), ([3, 1], 1.0), ([4, 2], 3.0)])
def test_expert_choice_takes_exactly_C_tokens(dispatch, lengths, cf):
    torch.manual_seed(0)
    sw = Switch(8, 16, 4, router="expert_choice", capacity_factor=cf, dispatch=dispatch).train()
    _, mask = padded_batch(lengths, 30); x = torch.randn(*mask.shape, 8)
    xf, m = x.reshape(-1, 8), mask.reshape(-1)
    n_real = int(m.sum()); C = min(expert_capacity(n_real, 4, cf), n_real)
    y, d = sw(x, mask)
    assert d.tokens_per_expert.tolist() == [C] * 4 and d.dropped.item() == 0 and d.aux_loss.item() == 0
    buffer = min(expert_capacity(m.numel(), 4, cf), m.numel())
    a = sw.router(xf, m, torch.tensor(C), buffer)
    assert a.valid.view(4, -1).sum(1).tolist() == [C] * 4
    assert m[a.token_index[a.valid]].all()                                   # padding is never chosen
    assert d.experts_per_token.sum().item() == 4 * C
    # each expert's chosen tokens are its C most probable real tokens
    p = torch.softmax(xf @ sw.router.weight.T, -1).masked_fill(~m[:, None], -1)
    for i in range(4):
        chosen = set(a.token_index.view(4, -1)[i][a.valid.view(4, -1)[i]].tolist())
        assert chosen == set(p[:, i].topk(C).indices.tolist())
    # the output is the gate-weighted sum over the experts that took each token
    ref = torch.zeros_like(xf)
    for e_, g_, t_, v_ in zip(a.expert_index, a.gate, a.token_index, a.valid):
        if v_: ref[t_] += g_ * sw.experts.expert(int(e_), xf[t_])
    torch.testing.assert_close(y.reshape(-1, 8), ref)
    assert d.unserved.item() == ((d.experts_per_token == 0) & m.reshape(-1)).sum().item()

def test_expert_choice_function_edge_cases():
    p = torch.softmax(torch.randn(5, 2), -1)
    e, g, t, v = expert_choice(p, 0, 2, torch.zeros(5, dtype=torch.bool))   # all padding: nothing chosen
    assert not v.any() and g.abs().sum() == 0
    with pytest.raises(ValueError, match="buffer"): expert_choice(p, 2, 6)
    y, d = Switch(4, 8, 2, router="expert_choice")(torch.randn(1, 3, 4), torch.zeros(1, 3, dtype=torch.bool))
    assert d.capacity.item() == 0 and torch.equal(y, torch.zeros_like(y))


# --- shared experts, fine-grained ------------------------------------------------------------------------------------

@pytest.mark.parametrize("router", ["switch", "hash", "expert_choice"])
def test_shared_experts_add_their_output_to_every_real_token(router):
    torch.manual_seed(0); sw = Switch(8, 16, 4, router=router, num_shared_experts=2).eval()
    torch.manual_seed(0); base = Switch(8, 16, 4, router=router).eval()
    base.load_state_dict({k: v for k, v in sw.state_dict().items() if not k.startswith("shared.")})
    ids, mask = padded_batch([6, 3], 30); x = torch.randn(2, 6, 8)
    y, d = sw(x, mask, ids); y0, d0 = base(x, mask, ids)
    xf = x.reshape(-1, 8)
    shared = (sw.shared.expert(0, xf) + sw.shared.expert(1, xf)).reshape(x.shape) * mask[..., None]
    torch.testing.assert_close(y, y0 + shared)
    assert torch.equal(d.tokens_per_expert, d0.tokens_per_expert)

def test_fine_grained_arithmetic():
    assert fine_grained(4, 128, 1, 4) == dict(num_experts=16, d_ff=32, top_k=4)
    fg = fine_grained(8, 64, 2, 2); sw, base = Switch(16, **fg), Switch(16, 64, 8, top_k=2)
    w = lambda s: (s.experts.w1.numel() + s.experts.w2.numel()) // s.num_experts * s.top_k   # active FFN weights
    assert w(sw) == w(base)
    for bad in [dict(m=3), dict(m=0), dict(top_k=9)]:
        with pytest.raises(ValueError): fine_grained(**{**dict(num_experts=8, d_ff=64, top_k=2, m=2), **bad})


# --- bias balancing (DeepSeek-V3) -------------------------------------------------------------------------------------

@pytest.mark.parametrize("N,k", [(8, 2), (8, 3), (16, 4)])
def test_bias_router_matches_deepseek_v3(N, k):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter
    cfg = DeepseekV3Config(hidden_size=16, n_routed_experts=N, num_experts_per_tok=k, n_group=1, topk_group=1,
                           norm_topk_prob=True, routed_scaling_factor=1.0)
    torch.manual_seed(k); ours = TopKRouter(16, N, top_k=k, balancing="bias").eval(); hf = DeepseekV3TopkRouter(cfg)
    with torch.no_grad():
        ours.bias.copy_(torch.randn(N) * 0.2)
        hf.weight.copy_(ours.weight); hf.e_score_correction_bias.copy_(ours.bias)
    x = torch.randn(64, 16)
    _, hf_w, hf_i = hf(x); a = ours(x)
    e, g = a.expert_index.view(k, -1).T, a.gate.view(k, -1).T
    o1, o2 = e.sort(-1).indices, hf_i.sort(-1).indices                     # transformers does not sort the k
    assert torch.equal(e.gather(1, o1), hf_i.gather(1, o2))
    torch.testing.assert_close(g.gather(1, o1), hf_w.gather(1, o2))
    # the bias changed the choice for some tokens but the gates are the unbiased sigmoid scores
    unbiased = torch.sigmoid(x @ ours.weight.T).topk(k, -1).indices.sort(-1).values
    assert not torch.equal(unbiased, e.sort(-1).values)
    s = torch.sigmoid(x @ ours.weight.T).gather(1, e)
    torch.testing.assert_close(g, s / s.sum(-1, keepdim=True))

def _load_cv(load): return (load.std(correction=0) / load.mean()).item()

@pytest.mark.parametrize("k", [1, 2])
def test_bias_balancing_moves_skewed_load_towards_uniform(k):
    "A frozen router and a skewed token stream: only the bias can move the load, and it evens it out."
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0); r = TopKRouter(16, 4, top_k=k, balancing="bias", bias_rate=0.01).train()
    center = r.weight[0].detach() * 3
    cvs = []
    for _ in range(150):
        with torch.no_grad(): r(center + torch.randn(256, 16, generator=g))
        cvs.append(_load_cv(r.load)); r.update_bias()
        assert r.load.sum() == 0                                     # counts reset after each update
    assert cvs[0] > 0.5 and sum(cvs[-20:]) / 20 < 0.5 * cvs[0], (cvs[0], cvs[-20:])
    assert r.bias[0] < 0 and r.bias.argmin() == 0                   # the overloaded expert was made less attractive

def test_bias_not_updated_in_eval_and_not_a_parameter():
    r = TopKRouter(8, 4, top_k=2, balancing="bias").eval()
    r(torch.randn(10, 8)); assert r.load.sum() == 0
    assert "bias" not in dict(r.named_parameters()) and "bias" in r.state_dict()
    sw = Switch(8, 16, 4, top_k=2, balancing="bias").train()
    sw(torch.randn(2, 5, 8)); assert sw.router.load.sum() == 20   # 10 tokens x 2 choices
    assert update_router_biases(nn.Sequential(sw)) == 1 and sw.router.bias.abs().sum() > 0
    assert update_router_biases(Switch(8, 16, 4, top_k=2)) == 0

def test_learner_step_updates_the_bias():
    from moe_course.learner import make_accelerator, train_step
    from moe_course.config import get_config
    from moe_course.optim import make_optimizer
    from moe_course.transformer import SwitchTransformerClassifier
    cfg = get_config(top_k=2, balancing="bias", bias_rate=0.01, aux_weight=0.0, num_experts=4)
    torch.manual_seed(0)
    model = SwitchTransformerClassifier(50, 2, max_len=8, d_model=16, n_heads=2, d_ff=16, n_layers=1, num_experts=4,
                                        top_k=2, balancing="bias", bias_rate=0.01)
    acc = make_accelerator(cfg); opt = make_optimizer(model, cfg)
    ids, mask = padded_batch([8, 5, 7], 50)
    train_step(acc, model.train(), dict(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 0])), opt, cfg)
    r = model.blocks[0].ffn.router
    assert isinstance(r, TopKRouter) and r.bias.abs().sum() > 0 and r.load.sum() == 0


# --- compile, gradients, bad input, config/CLI ----------------------------------------------------------------------

NEW = [dict(top_k=2), dict(router="expert_choice"), dict(num_shared_experts=1), dict(top_k=2, balancing="bias")]

@pytest.mark.parametrize("kw", NEW, ids=str)
@pytest.mark.parametrize("dispatch", DISPATCH)
def test_new_routers_compile_fullgraph(kw, dispatch):
    torch.manual_seed(0)
    sw = Switch(8, 16, 4, capacity_factor=1.0, dispatch=dispatch, **kw).train()
    x = torch.randn(2, 6, 8); mask = torch.ones(2, 6, dtype=torch.bool); mask[1, 4:] = False
    torch._dynamo.reset()
    compiled = torch.compile(sw, fullgraph=True, backend="aot_eager")
    yc, gc, pc, dc = run(compiled, x, mask)
    ye, ge, pe, de = run(sw, x, mask)
    torch.testing.assert_close(yc, ye); torch.testing.assert_close(gc, ge)
    for k in pe: torch.testing.assert_close(pc[k], pe[k], msg=k)
    assert torch.equal(dc.tokens_per_expert, de.tokens_per_expert) and torch.equal(dc.experts_per_token, de.experts_per_token)

@pytest.mark.parametrize("kw", NEW, ids=str)
def test_router_gets_gradient_and_dispatches_agree(kw):
    torch.manual_seed(0); a = Switch(8, 16, 4, capacity_factor=1.0, dispatch="grouped", **kw).train()
    torch.manual_seed(0); b = Switch(8, 16, 4, capacity_factor=1.0, dispatch="einsum", **kw).train()
    x = torch.randn(2, 7, 8); _, mask = padded_batch([7, 4], 30)
    ya, ga, pa, da = run(a, x, mask); yb, gb, pb, db = run(b, x, mask)
    torch.testing.assert_close(ya, yb)
    for k in pa: torch.testing.assert_close(pa[k], pb[k], msg=k)
    assert pa["router.weight"].abs().sum() > 0

def test_bad_arguments():
    for kw, msg in [(dict(top_k=5), "top_k"), (dict(top_k=0), "top_k"), (dict(router="expert_choice", top_k=2), "no top_k"),
                    (dict(router="hash", top_k=2), "learned router"), (dict(balancing="loss", top_k=2), "balancing"),
                    (dict(num_shared_experts=-1), "num_shared_experts"), (dict(top_k=2, jitter=0.1), "jitter"),
                    (dict(router="expert_choice", balancing="bias"), "balanced by construction"),
                    (dict(router="top2"), "router must be one of")]:
        with pytest.raises(ValueError, match=msg): Switch(8, 16, 4, **kw)
    with pytest.raises(ValueError, match="bias_rate"): TopKRouter(8, 4, 2, "bias", bias_rate=-1)

def test_diagnostics_and_explorer_cover_new_routers():
    d = routing_load(top_k=2)
    assert d.tokens_per_expert.sum().item() == 1024 and d.num_assignments.item() == 1024
    e = routing_load(router="expert_choice")
    assert e.dropped.item() == 0 and (e.tokens_per_expert == e.capacity).all()
    assert e.experts_per_token.sum().item() == e.capacity.item() * 4
    assert e.unserved.item() == (e.experts_per_token == 0).sum().item() and e.multi_served.item() > 0
    import matplotlib.pyplot as plt
    from moe_course.moe import plot_routing_load
    fig = plot_routing_load(e); assert "no expert" in fig.axes[0].get_title(); plt.close("all")

def test_config_and_cli_flags():
    from moe_course.cli import train_parser
    from moe_course.config import get_config
    from moe_course.imdb import build_model
    for argv, want in [(["--top-k", "2"], dict(top_k=2)), (["--router", "expert_choice"], dict(router="expert_choice")),
                       (["--num-shared-experts", "1"], dict(num_shared_experts=1)), (["--balancing", "bias"], dict(balancing="bias"))]:
        a = vars(train_parser().parse_args(argv)); cfg = get_config(**{k: a[k] for k in want})
        for k, v in want.items(): assert getattr(cfg, k) == v
        ffn = build_model(cfg, 100).blocks[0].ffn
        assert ffn.top_k == cfg.top_k and (ffn.shared is not None) == (cfg.num_shared_experts > 0)
        assert ffn.router.kind == ("expert_choice" if cfg.router == "expert_choice" else "switch")
    for bad in [dict(top_k=5), dict(router="hash", top_k=2), dict(router="expert_choice", balancing="bias"), dict(num_shared_experts=-1)]:
        with pytest.raises(ValueError): get_config(**bad)

def test_count_parameters_top_k():
    from moe_course.transformer import SwitchTransformerClassifier, count_parameters
    c1 = count_parameters(SwitchTransformerClassifier(50, max_len=8, d_model=16, d_ff=16, n_layers=1, num_experts=4))
    c2 = count_parameters(SwitchTransformerClassifier(50, max_len=8, d_model=16, d_ff=16, n_layers=1, num_experts=4, top_k=2))
    per_expert = 16 * 16 * 2 + 16 + 16
    assert c1["total"] == c2["total"] and c2["active"] - c1["active"] == per_expert

def test_summarize_routers():
    rows = [dict(task="t", router=r, seed=s, accuracy=a + 0.01 * s, step_time_s=st * (1 + s), load_cv=0.2, drop_fraction=0.1,
                 unserved_fraction=0.0) for r, a, st in [("top-1", 0.5, 1.0), ("top-2", 0.6, 2.0)] for s in range(3)]
    s = {r["router"]: r for r in summarize_routers(rows)}
    assert math.isclose(s["top-2"]["step_time_ratio"], 2.0) and math.isclose(s["top-2"]["accuracy"], 0.61)
    assert math.isclose(s["top-1"]["accuracy_std"], 0.01)


def test_experiment_script_quick_writes_stamped_record(tmp_path):
    import json, subprocess, sys
    from pathlib import Path
    from moe_course.routers import show_routers
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "routers_quick.json"
    subprocess.run([sys.executable, str(root / "experiments" / "routers.py"), "--quick", "--tasks", "memorize", "--out", str(out)],
                   check=True, capture_output=True, cwd=root)
    rec = json.loads(out.read_text())
    assert {"device", "commit", "wall_time_s", "command", "rows", "summary"} <= rec.keys()
    assert "--quick" in rec["command"] and sorted(r["router"] for r in rec["rows"]) == sorted(
        ["top-1", "top-2", "expert choice", "shared + routed", "bias"])
    ec = next(r for r in rec["rows"] if r["router"] == "expert choice")
    assert ec["drop_fraction"] == 0 and ec["load_cv"] < 1e-9          # every expert exactly full
    df = show_routers(tmp_path)
    assert len(df) == 5 and df.loc[df.router == "top-1", "step_time_ratio"].item() == 1.0
    import matplotlib.pyplot as plt; plt.close("all")
