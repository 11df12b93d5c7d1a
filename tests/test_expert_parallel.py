"""Tests for moe_course.expert_parallel and moe_course.ep_training on 2 CPU processes (gloo on 127.0.0.1).

The functions named `_rank_*` run inside the spawned processes (they must be importable: pytest puts this folder
on sys.path and `spawn` hands it to the children). Each child compares the expert-parallel computation with the
single-process one it computes itself, and returns the differences and the quantities to check."""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from moe_course.expert_parallel import ExpertParallelSwitch, reduce_diagnostics, spawn
from moe_course.moe import Switch
import moe_course.routers  # noqa: F401  registers the routers of chapter `routers` with Switch

ROUTERS = ["switch", "random", "hash"]
LAYER_CASES = ROUTERS + ["switch-ffn"]
TIMEOUT = 150   # seconds: the gloo collectives and the processes are bounded, nothing waits forever


def _batch(rank, B=3, T=7, d=8, vocab=60):
    "Rank `rank`'s own padded batch: x, mask (each row keeps >= 1 token), token ids, and a fixed loss weight."
    g = torch.Generator().manual_seed(1000 + rank)
    x, w = torch.randn(B, T, d, generator=g), torch.randn(B, T, d, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3; mask[:, 0] = True
    return x, mask, torch.randint(0, vocab, (B, T), generator=g), w


def _maxdiff(a, b): return (a - b).abs().max().item() if a.numel() else 0.0


def _compare_layer(rank, sw, ep, x, mask, ids, w, steps=2):
    "Run `steps` forward/backward passes of ep (on this rank) and sw (full weights, same batch); the largest differences."
    err = dict(y=0.0, x_grad=0.0, router_grad=0.0, experts_grad=0.0, diag=0)
    sl = slice(ep.first, ep.first + ep.num_local)
    for _ in range(steps):          # two steps: the random router's stream must advance in step on both sides
        sw.zero_grad(); ep.zero_grad()
        xe, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
        (y, d), (ys, ds) = ep(xe, mask, ids), sw(xs, mask, ids)
        ((y * w).sum() + 0.1 * d.aux_loss + 0.01 * d.z_loss).backward()
        ((ys * w).sum() + 0.1 * ds.aux_loss + 0.01 * ds.z_loss).backward()
        err["y"] = max(err["y"], _maxdiff(y, ys)); err["x_grad"] = max(err["x_grad"], _maxdiff(xe.grad, xs.grad))
        if sw.router.weight is not None:
            err["router_grad"] = max(err["router_grad"], _maxdiff(ep.router.weight.grad, sw.router.weight.grad))
        for k in ("w1", "b1", "w2", "b2"):      # an expert's gradient collects every rank's tokens: sum the references
            ref = getattr(sw.experts, k).grad.clone(); dist.all_reduce(ref)
            err["experts_grad"] = max(err["experts_grad"], _maxdiff(getattr(ep.experts, k).grad, ref[sl]))
        for f in ("tokens_per_expert", "dropped", "capacity", "num_tokens", "expert_index", "kept"):
            err["diag"] += int(not torch.equal(getattr(d, f), getattr(ds, f)))
        err["diag"] += int(not torch.allclose(d.gate, ds.gate)) + int(not torch.allclose(d.aux_loss, ds.aux_loss))
    return err, d, ds


def _rank_layer(rank, W):
    "Every router, with padding and capacity drops (cf 1.0): EP layer on this rank's batch vs Switch on the same batch."
    out = {}
    for key in LAYER_CASES:   # "switch-ffn": the gate on the FFN only (chapter moe), its skip added after the exchange
        router, gate = key.split("-")[0], "ffn" if key.endswith("-ffn") else "expert"
        torch.manual_seed(0)
        sw = Switch(8, 16, 4, capacity_factor=1.0, router=router, seed=3, gate=gate)
        ep = ExpertParallelSwitch.from_switch(sw)
        err, d, ds = _compare_layer(rank, sw, ep, *_batch(rank))
        tot = reduce_diagnostics(d)
        out[key] = dict(err=err, dropped=int(d.dropped), global_load=tot["tokens_per_expert"].tolist(),
                           local_load=d.tokens_per_expert.tolist(), recv=ep.last_exchange[1].tolist(),
                           send=ep.last_exchange[0].tolist(), n_local=ep.num_local)
    return out


def _rank_idle(rank, W):
    "A learned router that sends every token to expert 0 (on rank 0), and rank 1 with an all-padding batch."
    torch.manual_seed(0)
    sw = Switch(8, 16, 4, capacity_factor=2.0)
    with torch.no_grad(): sw.router.weight.copy_(torch.tensor([1.0, -1.0, -1.0, -1.0])[:, None].expand(4, 8))
    ep = ExpertParallelSwitch.from_switch(sw)
    x, mask, ids, w = _batch(rank)
    x = x.abs() + 0.1                                   # positive inputs: expert 0 has the largest logit
    if rank == 1: mask = torch.zeros_like(mask)         # rank 1 routes no token at all
    err, d, _ = _compare_layer(rank, sw, ep, x, mask, ids, w, steps=1)
    zero = all(torch.count_nonzero(p.grad).item() == 0 for p in ep.experts.parameters())
    return dict(err=err, experts_grad_zero=zero, grads_exist=all(p.grad is not None for p in ep.experts.parameters()),
                recv=ep.last_exchange[1].tolist(), sent=int(ep.last_exchange[0].sum()))


def _model(router="switch", cf=1.0):
    from moe_course.transformer import SwitchTransformerClassifier
    torch.manual_seed(0)
    return SwitchTransformerClassifier(60, 2, max_len=16, d_model=16, n_heads=2, d_ff=32, n_layers=2, num_experts=4,
                                       capacity_factor=cf, router=router, dropout=0.0)


def _global_batches(steps, W, B=3, T=9):
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(steps):
        ids = torch.randint(1, 60, (W * B, T), generator=g)
        lens = torch.randint(2, T + 1, (W * B,), generator=g)
        mask = torch.arange(T)[None] < lens[:, None]
        out.append((ids.masked_fill(~mask, 0), mask, torch.randint(0, 2, (W * B,), generator=g)))
    return out


def _loss(out, labels):
    # L_r = CE + 0.01 aux + 0.001 z on the local batch
    return F.cross_entropy(out.logits, labels) + 0.01 * out.aux_loss + 0.001 * out.z_loss


def _rank_train(rank, W, steps=3, B=3):
    """Three SGD steps (momentum) with drops (cf 1.0), the aux and z losses and clipping: EP + data parallel (manual
    sync) vs one process that averages the loss of the same W local batches (what the W ranks compute together).
    The gradients after sync and clipping are compared at every step. (Not Adam: the key bias of attention has a
    gradient that is zero in exact arithmetic, and Adam turns its 1e-9 rounding noise into full-size steps.)"""
    from moe_course.ep_training import clip_grad_norm_ep, is_expert_parameter, prepare_expert_parallel, sync_gradients
    ref, ep = _model(), prepare_expert_parallel(_model())
    opt_ref, opt_ep = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (ref, ep))
    losses, gdiff, sl = [], 0.0, slice(rank * 2, rank * 2 + 2)
    for ids, mask, labels in _global_batches(steps, W, B):
        loc = slice(rank * B, (rank + 1) * B)
        loss = _loss(ep(ids[loc], mask[loc]), labels[loc]); loss.backward()
        sync_gradients(ep); clip_grad_norm_ep(ep.parameters(), 0.5)
        glob = loss.detach().clone(); dist.all_reduce(glob); glob /= W
        # the reference: L = (1/W) sum_r L_r over the same local batches, in one process
        L = sum(_loss(ref(ids[r * B:(r + 1) * B], mask[r * B:(r + 1) * B]), labels[r * B:(r + 1) * B]) for r in range(W)) / W
        L.backward(); torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        P = dict(ref.named_parameters())
        for n, p in ep.named_parameters():
            gdiff = max(gdiff, _maxdiff(p.grad, P[n].grad[sl] if is_expert_parameter(p) else P[n].grad))
        for o in (opt_ep, opt_ref): o.step(); o.zero_grad()
        losses.append((glob.item(), L.item()))
    diff, P = {}, dict(ref.named_parameters())
    for n, p in ep.named_parameters():
        diff[n] = _maxdiff(p, P[n][sl] if is_expert_parameter(p) else P[n])
    return dict(losses=losses, diff=diff, grad_diff=gdiff, n_expert=sum(is_expert_parameter(p) for p in ep.parameters()))


def _rank_all(rank, W):
    "All the checks above in one launch (starting processes costs seconds on a small CPU)."
    return dict(layer=_rank_layer(rank, W), idle=_rank_idle(rank, W), train=_rank_train(rank, W))


@pytest.fixture(scope="module")
def ranks():
    return spawn(_rank_all, 2, timeout=TIMEOUT)


@pytest.mark.parametrize("router", LAYER_CASES)
def test_layer_equals_switch_on_local_batch(ranks, router):
    for r, res in enumerate(ranks):
        e = res["layer"][router]["err"]
        assert e["diag"] == 0, (r, router, e)
        for k in ("y", "x_grad", "router_grad", "experts_grad"): assert e[k] < 1e-5, (r, router, k, e[k])


def test_capacity_and_diagnostics_are_per_rank(ranks):
    L = [res["layer"]["switch"] for res in ranks]
    assert sum(l["dropped"] for l in L) > 0                        # cf 1.0 drops tokens: the capacity path is exercised
    glob = [sum(c) for c in zip(*(l["local_load"] for l in L))]
    for l in L: assert l["global_load"] == glob                    # reduce_diagnostics sums the per-rank loads
    for r, l in enumerate(L):                                      # counts exchanged: rank r receives what rank j sent
        for j in range(2): assert l["recv"][j] == L[j]["send"][r]


def test_idle_rank_takes_part(ranks):
    for r, res in enumerate(ranks):
        i = res["idle"]
        assert i["err"]["y"] < 1e-5 and i["err"]["experts_grad"] < 1e-5 and i["err"]["diag"] == 0, (r, i["err"])
        assert i["grads_exist"]
    assert ranks[1]["idle"]["recv"] == [[0, 0], [0, 0]] and ranks[1]["idle"]["experts_grad_zero"]
    assert ranks[1]["idle"]["sent"] == 0 and ranks[0]["idle"]["sent"] > 0
    assert not ranks[0]["idle"]["experts_grad_zero"]


def test_training_steps_match_single_process(ranks):
    for r, res in enumerate(ranks):
        t = res["train"]
        assert t["n_expert"] == 2 * 4                                # 2 layers x (w1, b1, w2, b2)
        for ep_loss, ref_loss in t["losses"]: assert ep_loss == pytest.approx(ref_loss, abs=1e-5)
        assert t["grad_diff"] < 1e-6, t["grad_diff"]
        assert max(t["diff"].values()) < 1e-5, max(t["diff"].items(), key=lambda kv: kv[1])
    assert [l[0] for l in ranks[0]["train"]["losses"]] == [l[0] for l in ranks[1]["train"]["losses"]]   # one global loss


def _fit_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    ids, lens = torch.randint(1, 50, (n, 12), generator=g), torch.randint(3, 13, (n,), generator=g)
    mask = torch.arange(12)[None] < lens[:, None]
    ids = ids.masked_fill(~mask, 0)
    return [dict(input_ids=ids[i], attention_mask=mask[i].long(), labels=(ids[i] % 2).sum() % 2) for i in range(n)]


def _rank_fit(rank, W, batch_size, expert_parallel):
    "moe_course's `fit` on the same data: one process with the global batch, or W processes with --expert-parallel."
    from torch.utils.data import DataLoader
    from moe_course.config import get_config
    from moe_course.data import set_seed
    from moe_course.imdb import build_model
    from moe_course.learner import fit
    import moe_course.ep_training  # noqa: F401  registers ExpertParallelCB: fit(cfg.expert_parallel=True) needs it
    from moe_course.moe import Switch
    # the settings under which EP on local batches and one process on the global batch define the same loss
    cfg = get_config("quick", num_experts=4, capacity_factor=4.0, aux_weight=0.0, dropout=0.0, epochs=2, scheduler="none",
                     label_smoothing=0.0, checkpoint=False, progress=False, patience=0, grad_clip=0.5,
                     expert_parallel=expert_parallel)
    set_seed(0); model = build_model(cfg, 50, 2)
    dls = dict(train=DataLoader(_fit_data(24, 0), batch_size=batch_size), valid=DataLoader(_fit_data(12, 1), batch_size=batch_size))
    res = fit(model, dls, cfg)
    keys = ("train_loss", "train_acc", "valid_loss", "valid_acc", "expert_load", "tokens_dropped")
    return dict(history=[{k: h[k] for k in keys} for h in res["history"]], gathered=type(model.blocks[0].ffn) is Switch,
                state={k: v.clone() for k, v in model.state_dict().items()})


def test_fit_with_expert_parallel_matches_one_process():
    one = _rank_fit(0, 1, 8, False)
    two = spawn(_rank_fit, 2, (4, True), timeout=TIMEOUT)
    for r in two:
        assert r["gathered"]                                         # experts gathered back after training
        for h1, h2 in zip(one["history"], r["history"]):
            for k in h1: assert h2[k] == pytest.approx(h1[k], abs=1e-5), k
        for k, v in one["state"].items():
            if k.endswith("attn.qkv.bias"):   # the key bias has a zero gradient (softmax ignores it): AdamW steps on
                d = v.shape[0] // 3           # rounding noise there, differently in 1 and 2 processes. Compare q and v
                v, w = torch.cat([v[:d], v[2 * d:]]), torch.cat([r["state"][k][:d], r["state"][k][2 * d:]])
            else: w = r["state"][k]
            torch.testing.assert_close(w, v, atol=1e-5, rtol=1e-5, msg=k)


def test_flag_and_errors():
    from moe_course.cli import train_parser
    from moe_course.config import get_config
    from moe_course.ep_training import prepare_expert_parallel
    assert vars(train_parser().parse_args(["--expert-parallel"]))["expert_parallel"] is True
    assert get_config().expert_parallel is False
    with pytest.raises(ValueError, match="torchrun"): prepare_expert_parallel(_model())


def test_from_switch_refuses_the_routers_after_switch():
    from moe_course.expert_parallel import single_process_group
    with single_process_group():
        for kw in (dict(top_k=2), dict(num_shared_experts=1), dict(router="expert_choice"), dict(balancing="bias")):
            with pytest.raises(ValueError, match="top-1"): ExpertParallelSwitch.from_switch(Switch(8, 16, 4, **kw))


def _rank_fit_resume(rank, W, out, stop):
    "`fit` with --expert-parallel and checkpoints into `out`: straight through, or stopped after `stop` epochs and resumed."
    import dataclasses
    from pathlib import Path
    from torch.utils.data import DataLoader
    from moe_course.config import get_config
    from moe_course.data import set_seed
    from moe_course.imdb import build_model
    from moe_course.learner import fit
    import moe_course.ep_training  # noqa: F401  registers ExpertParallelCB: fit(cfg.expert_parallel=True) needs it
    from moe_course.moe import Switch
    cfg = get_config("quick", num_experts=4, capacity_factor=1.0, epochs=3, scheduler="none", progress=False, patience=0,
                     expert_parallel=True, max_epochs_this_run=stop)
    dls = dict(train=DataLoader(_fit_data(24, 0), batch_size=4), valid=DataLoader(_fit_data(12, 1), batch_size=4))
    set_seed(0); model = build_model(cfg, 50, 2); res = fit(model, dls, cfg, out_dir=out)
    files = sorted(p.name for p in Path(out).glob("last*.pt"))
    if stop is not None:                            # a fresh process would build the model again, then resume
        cfg = dataclasses.replace(cfg, max_epochs_this_run=None)
        set_seed(0); model = build_model(cfg, 50, 2); res = fit(model, dls, cfg, out_dir=out, resume=True)
    return dict(files=files, history=[x for h in res["history"] for x in (h["train_loss"], h["valid_loss"])],
                gathered=type(model.blocks[0].ffn) is Switch, state={k: v.clone() for k, v in model.state_dict().items()})


def test_expert_parallel_checkpoints_resume_to_the_same_result(tmp_path):
    straight = spawn(_rank_fit_resume, 2, (str(tmp_path / "straight"), None), timeout=TIMEOUT)
    resumed = spawn(_rank_fit_resume, 2, (str(tmp_path / "resumed"), 1), timeout=TIMEOUT)
    assert resumed[0]["files"] == ["last.pt", "last.rank1.pt"]           # each rank saved its own experts
    for a, b in zip(straight, resumed):
        assert a["gathered"] and b["gathered"] and len(b["history"]) == 6   # gathered into one single-process model
        assert b["history"] == pytest.approx(a["history"], abs=1e-6)
        for k, v in a["state"].items(): torch.testing.assert_close(b["state"][k], v, atol=1e-6, rtol=1e-6, msg=k)
    assert straight[0]["state"]["blocks.0.ffn.experts.w1"].shape[0] == 4   # every expert, as one process would hold
