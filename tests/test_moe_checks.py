"""The invariant checks of chapter moe_bugs on our real layers, routers, training step and expert parallelism, and
proof that each check fails when its invariant is broken (the public regressions of the chapter, by monkeypatch)."""
import dataclasses
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from moe_course import learner as L, moe as M, routers as R, routing as RT
from moe_course.config import get_config
from moe_course.expert_parallel import spawn
from moe_course.moe import Switch
from moe_course.moe_checks import (check_aux_per_layer, check_aux_responds, check_bias_update, check_capacity,
                                   check_choice_priority, check_jitter, check_loss_includes_aux, check_padding_ignored,
                                   check_router_fp32, check_router_gates, check_step_updates_bias,
                                   check_task_gradient_reaches_router, ddp_router_load_error, ep_gradient_errors,
                                   router_biases)
from moe_course.optim import make_accelerator, make_optimizer, synthetic_loaders
from moe_course.routers import TopKRouter
from moe_course.routing import Route
from moe_course.transformer import SwitchTransformerClassifier

from helpers import padded_batch


@pytest.fixture
def xm():
    g = torch.Generator().manual_seed(0)
    return torch.randn(20, 8, generator=g), torch.rand(20, generator=g) > 0.3


def _model(**kw):
    torch.manual_seed(0)
    return SwitchTransformerClassifier(50, 2, max_len=12, d_model=16, n_heads=2, d_ff=32, n_layers=2, num_experts=4,
                                       dropout=0.0, **kw)


def _batch():
    ids, mask = padded_batch([12, 9, 5, 7], 50)
    return dict(input_ids=ids, attention_mask=mask.long(), labels=torch.tensor([0, 1, 1, 0]))


CFG = get_config("quick", aux_weight=0.5, z_weight=0.01, grad_clip=0.0)
LAYERS = [dict(), dict(top_k=2), dict(top_k=3), dict(num_shared_experts=1), dict(gate="ffn")]


# ---- the checks pass on our code ----

@pytest.mark.parametrize("kw", LAYERS)
def test_aux_responds_to_collapse(kw):
    assert check_aux_responds(Switch(8, 16, 4, **kw)) == pytest.approx(4, abs=0.05)   # N at collapse


@pytest.mark.parametrize("kw", LAYERS + [dict(router="expert_choice"), dict(router="random"), dict(top_k=2, balancing="bias")])
def test_padding_ignored(kw, xm):
    assert check_padding_ignored(Switch(8, 16, 4, **kw), *xm) < 1e-5


@pytest.mark.parametrize("k, balancing", [(2, "bias"), (4, "bias"), (2, "aux"), (4, "aux"), (1, "bias")])
def test_router_gates_from_raw_scores(k, balancing, xm):
    r = TopKRouter(8, 8, top_k=k, balancing=balancing)
    before = None if balancing == "aux" else r.bias.clone()
    assert check_router_gates(r, xm[0]) < 1e-6
    if before is not None: assert torch.equal(r.bias, before)      # the check's probe bias is put back


def test_bias_update_rule_and_buffer(xm):
    r = TopKRouter(8, 4, top_k=2, balancing="bias", bias_rate=0.01)
    delta = check_bias_update(r, xm[0] * 3)
    assert delta.abs().max() == pytest.approx(0.01) and "bias" in dict(r.named_buffers())


def test_train_step_updates_every_bias():
    model = _model(top_k=2, balancing="bias")
    acc, opt = make_accelerator(CFG), make_optimizer(model, CFG)
    assert check_step_updates_bias(model, lambda: L.train_step(acc, model, _batch(), opt, CFG)) == 2
    assert len(router_biases(model)) == 2


def test_fit_updates_every_bias():
    # the whole Learner loop, not only a lone train_step: RouterBiasCB comes with config_callbacks(cfg)
    model = SwitchTransformerClassifier(100, 2, max_len=24, d_model=16, n_heads=2, d_ff=32, n_layers=2, num_experts=4,
                                        dropout=0.0, top_k=2, balancing="bias")
    cfg = dataclasses.replace(CFG, epochs=1, progress=False, checkpoint=False)
    dls = synthetic_loaders(n_train=16, n_valid=8, n_test=8, batch_size=16)   # one step
    assert check_step_updates_bias(model, lambda: L.fit(model, dls, cfg)) == 2


def test_train_step_loss_includes_aux():
    assert check_loss_includes_aux(_model(), _batch(), CFG) < 1e-5


@pytest.mark.parametrize("kw", [dict(), dict(top_k=2), dict(num_shared_experts=1)])
def test_aux_is_sum_over_layers(kw):
    b = _batch()
    assert check_aux_per_layer(_model(**kw)(b["input_ids"], b["attention_mask"])) < 1e-5


@pytest.mark.parametrize("kw", [dict(capacity_factor=1.0), dict(capacity_factor=0.5), dict(capacity_factor=1.0, gate="ffn")])
def test_capacity_in_every_dispatch_mode(kw, xm):
    x, m = xm
    assert check_capacity(Switch(8, 16, 4, **kw), x, m) <= int(m.sum())
    assert check_capacity(Switch(8, 16, 4, **kw), x) <= 20


@pytest.mark.parametrize("router", ["switch", "expert_choice"])
def test_capacity_above_token_count(router, xm):
    x, m = xm
    _, d = Switch(8, 16, 4, capacity_factor=8.0, router=router)(x[None], m[None])   # cf > N: C above the real tokens
    if router == "expert_choice": assert d.capacity == d.num_tokens              # clamped to n
    else: assert d.capacity > d.num_tokens and d.dropped == 0                     # a threshold, harmless
    _, d = Switch(8, 16, 4, capacity_factor=8.0, router=router)(x[:1][None])       # one token
    assert d.num_tokens == 1


def test_first_choices_win_capacity():
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        idx = torch.stack([torch.randperm(6, generator=g)[:3] for _ in range(16)])  # top-3 of 6
        for C in (2, 5, 8): assert check_choice_priority(idx, 6, C) <= 48


@pytest.mark.parametrize("kw", [dict(), dict(balancing="bias"), dict(top_k=2)])
def test_task_gradient_reaches_router(kw, xm):
    assert check_task_gradient_reaches_router(Switch(8, 16, 4, **kw), xm[0]) > 1e-4


@pytest.mark.parametrize("gate", ["expert", "ffn"])
def test_jitter_train_only_router_only(gate, xm):
    assert check_jitter(Switch(8, 16, 4, jitter=0.3, gate=gate), xm[0][None]) < 1e-5


@pytest.mark.parametrize("kw", [dict(), dict(top_k=2, balancing="bias"), dict(router="expert_choice")])
def test_router_fp32_under_autocast(kw):
    x = torch.randn(1, 1024, 16, generator=torch.Generator().manual_seed(1))
    assert check_router_fp32(Switch(16, 32, 8, **kw), x) == 0


def _rank_checks(rank, world):
    "The multi-process checks in one launch (starting processes costs seconds on a small CPU)."
    return dict(ep=ep_gradient_errors(rank, world), ddp={f: ddp_router_load_error(rank, world, f) for f in (1, 2)})


@pytest.fixture(scope="module")
def ranks():
    return spawn(_rank_checks, 2, timeout=150)


def test_ep_gradients_equal_one_process(ranks):
    for r, res in enumerate(ranks):
        assert set(res["ep"]) == {"experts", "router", "dense"}
        for k, v in res["ep"].items(): assert v < 1e-6, (r, k, v)


def test_ddp_keeps_every_rank_router_load(ranks):
    # make_accelerator's DDP must not overwrite the load buffers, even with two forwards per step (FGM)
    for r, res in enumerate(ranks): assert res["ddp"] == {1: 0.0, 2: 0.0}, (r, res["ddp"])


# ---- each check fails when its invariant is broken (the chapter's reproductions) ----

# each fault patches the name where our code looks it up at call time: Route.assign calls routing's load_balanced_loss,
# moe_dispatch calls moe's assign_capacity_sorted, TopKRouter calls routers' top_k_gates
_tkg, _lbl, _rf, _acs, _lin = R.top_k_gates, RT.load_balanced_loss, Route.forward, M.assign_capacity_sorted, F.linear
FAULTS = {
    "bias in gate": (lambda xm: (check_router_gates, TopKRouter(8, 6, 2, "bias"), xm[0]),
                     mock.patch.object(R, "top_k_gates", lambda s, k, c=None, normalize=True: _tkg(s if c is None else c, k, None, normalize))),
    "no renormalisation": (lambda xm: (check_router_gates, TopKRouter(8, 8, 4), xm[0]),
                           mock.patch.object(R, "top_k_gates", lambda s, k, c=None, normalize=True: _tkg(s, k, c, False))),
    "aux off": (lambda xm: (check_aux_responds, Switch(8, 16, 4)),
                mock.patch.object(RT, "load_balanced_loss", lambda p, e, m=None: p.new_zeros(()))),
    "double softmax": (lambda xm: (check_aux_responds, Switch(8, 16, 4)),
                       mock.patch.object(RT, "load_balanced_loss", lambda p, e, m=None: _lbl(p.softmax(-1), e, m))),
    "padding counted": (lambda xm: (check_padding_ignored, Switch(8, 16, 4), *xm),
                        mock.patch.object(RT, "load_balanced_loss", lambda p, e, m=None: _lbl(p, e))),
    "capacity ignored": (lambda xm: (check_capacity, Switch(8, 16, 4, capacity_factor=1.0), *xm),
                         mock.patch.object(M, "assign_capacity_sorted", lambda e, N, C, m=None: _acs(e, N, 10**9, m))),
    "eval jitter": (lambda xm: (check_jitter, Switch(8, 16, 4, jitter=0.3), xm[0][None]),
                    mock.patch.object(Route, "train", lambda self, mode=True: self)),
    "detached gate": (lambda xm: (check_task_gradient_reaches_router, Switch(8, 16, 4), xm[0]),
                      mock.patch.object(Route, "forward", lambda self, *a, **k: dataclasses.replace(_rf(self, *a, **k), gate=_rf(self, *a, **k).gate.detach()))),
    "bf16 router": (lambda xm: (check_router_fp32, Switch(16, 32, 8), torch.randn(1, 512, 16)),
                    mock.patch.object(F, "linear", lambda a, w, b=None: _lin(a.bfloat16(), w.bfloat16(), b))),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_check_fails_under_fault(name, xm):
    make, fault = FAULTS[name]
    check, *args = make(xm)
    check(*args)                                         # passes on our code
    with fault, pytest.raises(AssertionError): check(*args)


def test_bias_never_updated_is_caught():
    model = _model(top_k=2, balancing="bias")
    acc, opt = make_accelerator(CFG), make_optimizer(model, CFG)
    # RouterBiasCB (chapter routers) calls routers' update_router_biases after every optimiser step
    with mock.patch.object(R, "update_router_biases", lambda m: 0), pytest.raises(AssertionError, match="unchanged"):
        check_step_updates_bias(model, lambda: L.train_step(acc, model, _batch(), opt, CFG))
    # callbacks written by hand get only what is in them: RouterBiasCB left out is the same bug
    with pytest.raises(AssertionError, match="unchanged"):
        check_step_updates_bias(model, lambda: L.train_step(acc, model, _batch(), opt, CFG, cbs=[]))
    assert check_step_updates_bias(model, lambda: L.train_step(acc, model, _batch(), opt, CFG, cbs=[R.RouterBiasCB()])) == 2


def test_aux_never_added_is_caught():
    cl = L.compute_loss   # Learner.train_step (chapter learner) looks compute_loss up in its own module
    with mock.patch.object(L, "compute_loss", lambda o, y, c: cl(o, y, dataclasses.replace(c, aux_weight=0.0))):
        with pytest.raises(AssertionError, match="CE"): check_loss_includes_aux(_model(), _batch(), CFG)


def test_checks_reject_bad_input(xm):
    with pytest.raises(AssertionError, match="no bias-balanced router"): check_step_updates_bias(_model(), lambda: None)
    with pytest.raises((IndexError, RuntimeError)): check_choice_priority(torch.tensor([[0, 5]]), 4, 2)   # expert 5 of 4
