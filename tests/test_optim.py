"The warm-up + cosine schedule of moe_course.optim: the formula of the chapter, step by step, through the real optimiser."
import math

import pytest
import torch

from moe_course.config import get_config
from moe_course.optim import TinyTextClassifier, make_optimizer, make_scheduler, warmup_cosine


def _lrs(epochs, steps_per_epoch, warmup_frac, lr=2.0):
    "The learning rate each optimiser step actually used, read from the optimiser."
    torch.manual_seed(0)
    cfg = get_config("quick", lr=lr, scheduler="cosine", epochs=epochs, warmup_frac=warmup_frac)
    opt = make_optimizer(TinyTextClassifier(), cfg)
    sch = make_scheduler(opt, cfg, steps_per_epoch)
    out = []
    for _ in range(epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"]); opt.step(); sch.step()
    return out


@pytest.mark.parametrize("epochs,steps,frac", [(1, 10, 0.2), (3, 37, 0.1), (2, 50, 0.0), (1, 7, 0.5)])
def test_schedule_is_the_formula(epochs, steps, frac):
    lr, T = 2.0, epochs * steps
    Tw = int(frac * T)
    # eta_t = eta (t+1)/T_w for t < T_w, then eta (1 + cos(pi (t - T_w)/(T - T_w)))/2, written out independently
    want = [lr * (t + 1) / Tw if t < Tw else lr * 0.5 * (1 + math.cos(math.pi * (t - Tw) / (T - Tw))) for t in range(T)]
    got = _lrs(epochs, steps, frac, lr)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_first_step_moves_peak_is_reached_last_step_is_near_zero():
    lrs = _lrs(1, 10, 0.2, lr=1.0)
    assert lrs[0] == pytest.approx(0.5)                  # eta / T_w, not 0: no wasted first step
    assert max(lrs) == pytest.approx(1.0) and lrs[1] == pytest.approx(1.0)
    assert 0 < lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))  # ~0.038: near 0, not 0
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))  # non-increasing after the peak


def test_last_step_shrinks_like_one_over_length_squared():
    for n in (16, 80, 800):   # T - T_w cosine steps: the last multiplier is ~ pi^2 / (4 n^2)
        assert warmup_cosine(n - 1, n, 0) == pytest.approx(math.pi ** 2 / (4 * n ** 2), rel=0.01)


def test_no_warmup_starts_at_the_peak():
    assert warmup_cosine(0, 100, 0) == 1.0
    assert _lrs(1, 20, 0.0, lr=1.0)[0] == pytest.approx(1.0)


def _head_first(name): return 1.0 if name.startswith("head.") else 0.25


def test_lr_mult_default_keeps_the_two_groups():
    "Without lr_mult: one decay group and one no-decay group at cfg.lr, every trainable parameter once."
    m, cfg = TinyTextClassifier(), get_config("quick", lr=3e-3)
    opt = make_optimizer(m, cfg)
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(3e-3, cfg.weight_decay), (3e-3, 0.0)]
    assert sorted(id(p) for g in opt.param_groups for p in g["params"]) == sorted(id(p) for p in m.parameters())


@pytest.mark.parametrize("scheduler", ["cosine", "plateau"])
def test_lr_mult_ratio_holds_through_the_schedule(scheduler):
    "Each group keeps its multiple of the head's rate at every step, whichever schedule runs."
    cfg = get_config("quick", lr=1e-2, scheduler=scheduler, epochs=2, warmup_frac=0.25, plateau_patience=0)
    opt = make_optimizer(TinyTextClassifier(), cfg, lr_mult=_head_first)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-2, 1e-2, 2.5e-3])
    sch = make_scheduler(opt, cfg, steps_per_epoch=4)
    for epoch in range(2):
        for _ in range(4):
            lrs = [g["lr"] for g in opt.param_groups]
            assert lrs[2] == pytest.approx(0.25 * lrs[0]) and lrs[1] == lrs[0] > 0
            opt.step()
            if scheduler == "cosine": sch.step()
        if scheduler == "plateau": sch.step(1.0)            # a loss that never improves: the rate halves
    if scheduler == "plateau": assert opt.param_groups[0]["lr"] < 1e-2


def test_discriminative_lr_moves_the_encoder_less():
    "A tiny multiplier leaves the encoder (the embedding) almost where it was while the head trains at the full rate."
    from moe_course.experts_carry import DiscriminativeLR
    from moe_course.learner import Learner
    from moe_course.optim import synthetic_loaders
    torch.manual_seed(0); m = TinyTextClassifier()
    emb, head = m.tok_emb.weight.detach().clone(), m.head.weight.detach().clone()
    cfg = get_config("quick", lr=1e-2, epochs=1, scheduler="cosine", progress=False, checkpoint=False)
    Learner(m, synthetic_loaders(), cfg, cbs=[DiscriminativeLR(1e-6)]).fit()
    assert (m.tok_emb.weight - emb).abs().max() < 1e-4 < (m.head.weight - head).abs().max()
    with pytest.raises(ValueError, match="mult must be > 0"): DiscriminativeLR(-1.0)
