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
