"Tests for moe_course.routing: losses (vs an independent computation and vs transformers), exact capacity, routers."
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moe_course.routing import (Route, assign_capacity, assign_capacity_sorted, expert_capacity, hash_tokens,
                                load_balanced_loss, random_experts, router_z_loss, tokens_per_expert)

hf = pytest.importorskip("transformers.models.switch_transformers.modeling_switch_transformers")


def np_load_balanced(probs, idx, mask=None):
    "Independent loop version: N * sum_i f_i P_i over real tokens."
    probs, idx = np.asarray(probs, dtype=np.float64), np.asarray(idx)
    keep = np.ones(len(idx), bool) if mask is None else np.asarray(mask, bool)
    n, N = keep.sum(), probs.shape[1]
    total = 0.0
    for i in range(N):
        f = sum(1 for t in range(len(idx)) if keep[t] and idx[t] == i) / n
        P = sum(probs[t, i] for t in range(len(idx)) if keep[t]) / n
        total += f * P
    return N * total


@pytest.mark.parametrize("N", [1, 2, 4, 8])
def test_load_balanced_matches_independent_and_hf(N):
    g = torch.Generator().manual_seed(N)
    probs = torch.randn(24, N, generator=g).softmax(-1)
    idx = probs.argmax(-1)
    ours = load_balanced_loss(probs, idx)
    assert ours.item() == pytest.approx(np_load_balanced(probs, idx), rel=1e-5)
    # HF works on [groups, tokens, N]; with one group (no padding, no drops) it is the same quantity.
    # Convention found in transformers 5.23: HF also multiplies the mean over experts by N**2 (= N * sum_i).
    torch.testing.assert_close(ours, hf.load_balancing_loss_func(probs[None], idx[None]))


def test_load_balanced_hf_grouping_difference():
    "HF averages f_i*P_i per sequence (group) and then over groups; we pool the whole batch."
    probs = torch.tensor([[[0.9, 0.1], [0.9, 0.1]], [[0.2, 0.8], [0.2, 0.8]]])
    idx = probs.argmax(-1)
    pooled = load_balanced_loss(probs.reshape(-1, 2), idx.reshape(-1))
    per_group = hf.load_balancing_loss_func(probs, idx)
    assert pooled.item() == pytest.approx(np_load_balanced(probs.reshape(-1, 2), idx.reshape(-1)))
    assert per_group.item() == pytest.approx(np.mean([np_load_balanced(probs[b], idx[b]) for b in range(2)]))
    assert pooled.item() != pytest.approx(per_group.item())
    # with a single group they agree
    torch.testing.assert_close(load_balanced_loss(probs[0], idx[0]), hf.load_balancing_loss_func(probs[:1], idx[:1]))


def test_load_balanced_mask_and_shapes():
    g = torch.Generator().manual_seed(0)
    probs = torch.randn(2, 6, 4, generator=g).softmax(-1)
    idx = probs.argmax(-1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]).bool()
    ours = load_balanced_loss(probs, idx, mask)
    ref = np_load_balanced(probs.reshape(-1, 4), idx.reshape(-1), mask.reshape(-1))
    assert ours.item() == pytest.approx(ref, rel=1e-5)
    torch.testing.assert_close(ours, load_balanced_loss(probs[mask], idx[mask]))        # masked == dropped rows
    torch.testing.assert_close(ours, load_balanced_loss(probs, F.one_hot(idx, 4), mask))  # one-hot form
    with pytest.raises(ValueError, match="mask has"):
        load_balanced_loss(probs, idx, mask[:, :3])
    with pytest.raises(ValueError, match="does not match"):
        load_balanced_loss(probs.reshape(-1, 4), F.one_hot(idx.reshape(-1)[:5], 4))


@pytest.mark.parametrize("N", [2, 3, 8])
def test_uniform_is_one_collapsed_is_N(N):
    n = 4 * N
    uniform = torch.full((n, N), 1.0 / N)
    assert load_balanced_loss(uniform, torch.arange(n) % N).item() == pytest.approx(1.0)
    collapsed = F.one_hot(torch.zeros(n, dtype=torch.long), N).float()
    assert load_balanced_loss(collapsed, torch.zeros(n, dtype=torch.long)).item() == pytest.approx(N)


def test_load_balanced_gradient_only_through_probs():
    probs = torch.randn(10, 4).softmax(-1).requires_grad_()
    load_balanced_loss(probs, probs.argmax(-1)).backward()
    f = torch.bincount(probs.argmax(-1), minlength=4).float() / 10
    # d/dP_{t,i} of N^2 * mean_i f_i * mean_t p_ti = N * f_i / n
    torch.testing.assert_close(probs.grad, (4 * f / 10).expand(10, 4))


def test_router_z_loss_matches_independent_and_hf():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 4, generator=g) * 3
    ref = np.mean([math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.reshape(-1, 4).tolist()])
    assert router_z_loss(logits).item() == pytest.approx(ref, rel=1e-5)
    torch.testing.assert_close(router_z_loss(logits), hf.router_z_loss_func(logits))
    mask = torch.zeros(3, 5, dtype=torch.bool); mask[0] = True
    torch.testing.assert_close(router_z_loss(logits, mask), hf.router_z_loss_func(logits[:1]))
    assert router_z_loss(torch.zeros(2, 4)).item() == pytest.approx(math.log(4) ** 2)


def test_expert_capacity():
    assert expert_capacity(10, 4, 1.0) == 3 and expert_capacity(12, 4, 1.0) == 3 and expert_capacity(12, 4, 1.25) == 4
    assert expert_capacity(0, 4, 1.0) == 1
    with pytest.raises(ValueError, match="capacity_factor"):
        expert_capacity(8, 2, -1.0)
    with pytest.raises(ValueError, match="capacity_factor"):
        expert_capacity(8, 2, float("nan"))


@pytest.mark.parametrize("n,N,cf,C", [(100, 2, 1.1, 55), (10, 1, 0.7, 7), (30, 3, 0.1, 1), (1000, 8, 1.25, 157),
                                      (9, 3, 1 / 3, 1), (40, 4, 2.2, 22), (3, 7, 1.0, 1)])
def test_expert_capacity_is_exact(n, N, cf, C):
    "ceil(cf * n / N) of the decimal cf, with no float error (math.ceil(1.1 * 100 / 2) is 56), for ints and tensors."
    from fractions import Fraction
    exact = max(1, math.ceil(Fraction(str(cf)).limit_denominator(10**6) * n / N))
    assert expert_capacity(n, N, cf) == exact == C
    t = expert_capacity(torch.tensor(n), N, cf)
    assert torch.is_tensor(t) and t.dtype == torch.long and t.item() == C


def test_assign_capacity_earlier_tokens_win_and_padding_takes_no_slot():
    e = torch.tensor([0, 0, 1, 0, 0, 1, 0])
    mask = torch.tensor([1, 0, 1, 1, 1, 1, 1]).bool()
    pos, keep = assign_capacity(e, 2, capacity=2, mask=mask)
    # expert 0 real tokens in order: 0, 3, 4, 6 -> positions 0,1,2,3 ; token 1 is padding
    assert pos[[0, 3, 4, 6]].tolist() == [0, 1, 2, 3]
    assert keep.tolist() == [True, False, True, True, False, True, False]


@pytest.mark.parametrize("seed", range(4))
def test_sorted_capacity_matches_one_hot_definition(seed):
    g = torch.Generator().manual_seed(seed)
    n, N = 300, 6
    e = torch.randint(0, N, (n,), generator=g); mask = torch.rand(n, generator=g) < 0.7
    for C in (1, 20, 60, torch.tensor(33)):
        pos, keep = assign_capacity(e, N, C, mask)
        pos2, keep2, counts = assign_capacity_sorted(e, N, C, mask)
        assert torch.equal(pos[mask], pos2[mask]) and torch.equal(keep, keep2)
        assert torch.equal(counts, torch.bincount(e[mask], minlength=N)) and torch.equal(counts, tokens_per_expert(e, N, mask))
    pos3, keep3, _ = assign_capacity_sorted(e, N, 20)                          # no mask
    assert torch.equal((pos3, keep3)[1], assign_capacity(e, N, 20)[1])


def test_losses_ignore_nonfinite_padding():
    "Masking selects (torch.where), it does not multiply by 0: NaN/inf in padding rows leave both losses unchanged."
    g = torch.Generator().manual_seed(0)
    probs = torch.randn(8, 4, generator=g).softmax(-1); logits = torch.randn(8, 4, generator=g)
    mask = torch.ones(8, dtype=torch.bool); mask[[2, 5]] = False
    bad_p, bad_l = probs.clone(), logits.clone()
    bad_p[2] = float("nan"); bad_l[2] = float("inf"); bad_l[5] = float("nan")
    idx = probs.argmax(-1)
    torch.testing.assert_close(load_balanced_loss(bad_p, idx, mask), load_balanced_loss(probs, idx, mask))
    torch.testing.assert_close(load_balanced_loss(bad_p, F.one_hot(idx, 4), mask), load_balanced_loss(probs, idx, mask))
    torch.testing.assert_close(router_z_loss(bad_l, mask), router_z_loss(logits, mask))
    lp = bad_l.clone().requires_grad_()
    router_z_loss(lp, mask).backward()
    assert torch.isfinite(lp.grad).all() and (lp.grad[~mask] == 0).all()


def test_switch_router_float32_and_jitter_on_copy():
    torch.manual_seed(0)
    r = Route(8, 4, jitter=0.2)
    x = torch.randn(16, 8)
    x0 = x.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = r(x.bfloat16())
    assert out.probs.dtype == torch.float32 and out.logits.dtype == torch.float32 and out.gate.dtype == torch.float32
    r.train(); a = r(x).logits; b = r(x).logits
    assert not torch.equal(a, b)                                     # jitter differs between calls in training
    assert torch.equal(x, x0)                                        # the input itself is untouched
    r.eval(); torch.testing.assert_close(r(x).logits, x @ r.weight.T)  # no jitter in evaluation
    torch.testing.assert_close(r(x).gate, r(x).probs.max(-1).values)


def test_temperature_keeps_choice_changes_confidence():
    torch.manual_seed(0)
    x = torch.randn(32, 8)
    a, b = Route(8, 4), Route(8, 4, temperature=0.1)
    b.load_state_dict(a.state_dict())
    oa, ob = a(x), b(x)
    assert torch.equal(oa.expert_index, ob.expert_index)
    assert (ob.gate >= oa.gate).all()


def test_random_router():
    r = Route(8, 4, "random", seed=7)
    assert sum(p.numel() for p in r.parameters()) == 0 and list(r.state_dict()) == ["draws"]   # the stream's counter
    x = torch.randn(50, 8)
    r.train()
    a = r(x)
    b = Route(8, 4, "random", seed=7).train()(torch.randn(50, 8) * 100)   # other input, same seed
    assert torch.equal(a.expert_index, b.expert_index)                      # ignores input, reproducible
    assert not torch.equal(r(x).expert_index, a.expert_index)               # training stream advances
    assert not torch.equal(Route(8, 4, "random", seed=8).train()(x).expert_index, a.expert_index)
    r.manual_seed(7); assert torch.equal(r(x).expert_index, a.expert_index)  # restart the stream
    r.eval()
    assert torch.equal(r(x).expert_index, r(x).expert_index)               # evaluation is deterministic
    pad = torch.rand(50, generator=torch.Generator().manual_seed(0)) < 0.3
    # with a mask, the k-th real token takes the k-th draw: padding never shifts real tokens' experts
    assert torch.equal(r(x, mask=~pad).expert_index[~pad], r(x[~pad]).expert_index)
    assert torch.equal(a.gate, torch.ones(50)) and a.probs is None and a.logits is None
    counts = torch.bincount(Route(8, 4, "random").train()(torch.randn(4000, 8)).expert_index, minlength=4)
    assert (counts > 800).all()                                             # roughly uniform


def test_random_router_stream_resumes_from_state_dict():
    "The random stream's position is the `draws` buffer: a state_dict restores it, like a checkpoint does on resume."
    a = Route(8, 4, "random", seed=3).train()
    x = torch.randn(30, 8)
    for _ in range(3): a(x)
    b = Route(8, 4, "random", seed=3).train()
    b.load_state_dict(a.state_dict())
    assert b.draws.item() == 3 and torch.equal(a(x).expert_index, b(x).expert_index)
    assert not torch.equal(a(x).expert_index, Route(8, 4, "random", seed=3).train()(x).expert_index)   # not call 0


def test_random_experts_uniform_and_device_side():
    "Counter-based draws: uniform over experts, a different draw per call, independent of n for the first tokens."
    e = random_experts(40_000, 8, seed=0, step=0)
    counts = torch.bincount(e, minlength=8).float()
    assert e.dtype == torch.long and ((counts - 5000).abs() < 300).all()         # ~4 sigma around 5,000
    assert torch.equal(random_experts(100, 8, 0, 0), e[:100])                  # the k-th token takes the k-th draw
    assert (random_experts(1000, 8, 0, 1) != e[:1000]).float().mean() > 0.8     # the next call: fresh draws
    assert (random_experts(1000, 8, 1, 0) != e[:1000]).float().mean() > 0.8     # another seed: another stream
    step = torch.tensor(5)
    assert torch.equal(random_experts(50, 8, 0, step), random_experts(50, 8, 0, 5))   # a device tensor or an int
    assert (e[:10000] != hash_tokens(torch.arange(10000), 8)).float().mean() > 0.8   # not the hash of the position
    # consecutive calls are not correlated: the pair (call s, call s+1) is uniform over the 64 cells
    pairs = torch.bincount(e[:20000] * 8 + random_experts(20000, 8, 0, 1), minlength=64).float()
    assert ((pairs - 312.5).abs() < 90).all()


def test_hash_router():
    r = Route(8, 4, "hash")
    assert sum(p.numel() for p in r.parameters()) == 0
    ids = torch.tensor([3, 17, 3, 99, 17, 3])
    e1 = r(torch.randn(6, 8), ids).expert_index
    e2 = r.eval()(torch.randn(6, 8), ids.flip(0)).expert_index.flip(0)
    assert torch.equal(e1, e2) and e1[0] == e1[2] == e1[5] and e1[1] == e1[4]
    assert torch.equal(e1, hash_tokens(ids, 4))
    assert r(torch.randn(2, 3, 8).reshape(6, 8), ids.reshape(2, 3)).expert_index.shape == (6,)
    counts = torch.bincount(hash_tokens(torch.arange(20000), 8), minlength=8)
    assert counts.min() > 2000                                              # spreads ids across experts
    with pytest.raises(ValueError, match="token_ids"):
        r(torch.randn(6, 8))
    with pytest.raises(ValueError, match="4 entries for 6 tokens"):
        r(torch.randn(6, 8), ids[:4])


def test_route_bad_arguments():
    with pytest.raises(ValueError, match="router kind"):
        Route(8, 4, "expert_choice")
    with pytest.raises(ValueError, match="num_experts"):
        Route(8, 0)
    with pytest.raises(ValueError, match="temperature"):
        Route(8, 4, temperature=0)


@pytest.mark.parametrize("capacity", [2, 3, 100])
def test_switch_router_and_capacity_match_hf_top1_router(capacity):
    "Same logits, probabilities, gate and capacity mask as HF's SwitchTransformersTop1Router on one sequence."
    from transformers import SwitchTransformersConfig
    N, d, n = 4, 8, 12
    cfg = SwitchTransformersConfig(d_model=d, num_experts=N, expert_capacity=capacity, router_bias=False,
                                   router_jitter_noise=0.0, router_dtype="float32")
    cfg.hidden_size = d
    hf_router = hf.SwitchTransformersTop1Router(cfg).eval()
    ours = Route(d, N).eval()
    with torch.no_grad():
        ours.weight.copy_(hf_router.classifier.weight)
    x = torch.randn(1, n, d, generator=torch.Generator().manual_seed(capacity))
    hf_mask, hf_gate, hf_logits = hf_router(x.clone())
    out = ours(x[0])
    torch.testing.assert_close(out.logits, hf_logits[0])
    torch.testing.assert_close(out.gate, hf_gate[0, :, 0])
    _, keep = assign_capacity(out.expert_index, N, capacity)
    ours_mask = F.one_hot(out.expert_index, N) * keep[:, None]      # earlier tokens win, as in HF
    assert torch.equal(ours_mask, hf_mask[0].long())
    # HF's model-level losses use the pre-capacity argmax, like load_balanced_loss
    torch.testing.assert_close(load_balanced_loss(out.probs, out.expert_index),
                               hf.load_balancing_loss_func(hf_logits.softmax(-1), hf_logits.argmax(-1)))
