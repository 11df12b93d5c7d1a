"Tests of moe_course.routing_study: the four study models, routing properties, load balance, timing, sweep, tables."
import json, math, statistics, subprocess, sys
from pathlib import Path

import pytest
import torch

from moe_course.core import save_result
from moe_course.moe import Switch, SwitchDiagnostics
from moe_course.routing_study import (ROUTERS, load_balance, measure_balance, results_table, show_study, step_time_sweep,
                                      study_model, summarize, text_batch, time_train_steps)
from moe_course.transformer import count_parameters

KW = dict(d_model=16, n_heads=2, d_ff=24, n_layers=2, max_len=32)
ROOT = Path(__file__).resolve().parents[1]


def switches(m): return [x for x in m.modules() if isinstance(x, Switch)]


def diag(counts, dropped=0):
    return SwitchDiagnostics(torch.tensor(counts), dropped, torch.zeros(len(counts)), torch.zeros(()), torch.zeros(()),
                             10, sum(counts))


def test_study_models_equal_active_parameters():
    ms = {r: study_model(r, 300, num_experts=4, **KW) for r in ROUTERS}
    p = {r: count_parameters(m) for r, m in ms.items()}
    assert p["dense"]["active"] == p["random"]["active"] == p["hash"]["active"]
    assert p["switch"]["active"] - p["dense"]["active"] == 2 * 16 * 4          # + the learned routers L·d·N
    assert p["switch"]["total"] - p["random"]["total"] == 2 * 16 * 4
    assert p["random"]["total"] == p["hash"]["total"] > p["dense"]["total"]
    assert switches(ms["dense"]) == [] and all(len(switches(ms[r])) == 2 for r in ("switch", "random", "hash"))


@pytest.mark.parametrize("router,n,match", [("learned", 4, "router must be"), ("random", 1, "num_experts >= 2")])
def test_study_model_bad_input(router, n, match):
    with pytest.raises(ValueError, match=match): study_model(router, 100, num_experts=n, **KW)


def test_random_routing_no_parameters_ignores_input():
    m = study_model("random", 300, num_experts=4, **KW)
    for s in switches(m): assert sum(p.numel() for p in s.router.parameters()) == 0
    m.eval()
    a, b = text_batch(4, 16, 300, seed=0), text_batch(4, 16, 300, seed=1)     # different tokens
    da, db = m(a["input_ids"]).diagnostics, m(b["input_ids"]).diagnostics
    assert all(torch.equal(x.tokens_per_expert, y.tokens_per_expert) for x, y in zip(da, db))
    r = switches(m)[0].router
    assert torch.equal(r(torch.randn(64, 16)).expert_index, r(torch.zeros(64, 16)).expert_index)


def test_random_routing_reproducible_with_seed():
    def stream(seed):
        m = study_model("random", 300, num_experts=4, seed=seed, **KW).train()
        return [switches(m)[0].router(torch.randn(40, 16)).expert_index for _ in range(3)]
    s0, s0b, s1 = stream(0), stream(0), stream(1)
    assert all(torch.equal(a, b) for a, b in zip(s0, s0b))
    assert not all(torch.equal(a, b) for a, b in zip(s0, s1))
    assert not torch.equal(s0[0], s0[1])                      # training: a fresh draw every step
    # the seed also fixes the initial weights
    a, b = study_model("switch", 300, seed=3, **KW), study_model("switch", 300, seed=3, **KW)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_hash_routing_same_token_same_expert():
    m = study_model("hash", 300, num_experts=4, **KW).eval()
    r = switches(m)[0].router
    ids = torch.tensor([7, 11, 7, 250, 11, 7])
    e = r(torch.randn(6, 16), ids).expert_index
    assert e[0] == e[2] == e[5] and e[1] == e[4]
    assert torch.equal(e, r(torch.randn(6, 16) * 50, ids).expert_index)
    # spread: many distinct ids use every expert
    assert set(r(torch.randn(1000, 16), torch.arange(1000)).expert_index.tolist()) == {0, 1, 2, 3}


def test_load_balance_cv_formula():
    counts = [9, 3, 6, 2]
    out = load_balance([diag(counts, 2)])
    assert math.isclose(out["cv"], statistics.pstdev(counts) / statistics.mean(counts), rel_tol=1e-9)
    assert math.isclose(out["max_over_mean"], 9 / 5) and math.isclose(out["drop_frac"], 2 / 20)
    # two layers: mean of per-layer CVs; two batches of one layer: counts are summed first
    two_layers = load_balance([diag([4, 4]), diag([8, 0])])
    assert math.isclose(two_layers["cv"], (0 + 1) / 2)
    assert math.isclose(load_balance([[diag([3, 1])], [diag([1, 3])]])["cv"], 0.0)
    assert load_balance([]) is None


def test_measure_balance_on_models():
    batch = text_batch(8, 16, 300)
    loader = [batch, batch]
    assert measure_balance(study_model("dense", 300, **KW), loader) is None
    bal = measure_balance(study_model("random", 300, num_experts=4, **KW), loader)
    assert 0 <= bal["cv"] < 0.5 and 0 <= bal["drop_frac"] < 0.5


def test_time_train_steps_and_bad_input():
    m = study_model("switch", 300, **KW)
    r = time_train_steps(m, text_batch(4, 16, 300), steps=2, warmup=1)
    assert r["step_s"] > 0 and math.isclose(r["tokens_per_s"], 64 / r["step_s"]) and r["steps"] == 2
    with pytest.raises(ValueError, match="steps >= 1"): time_train_steps(m, text_batch(2, 8, 300), steps=0)


def test_step_time_sweep_shape_and_budget():
    kw = dict(vocab_size=200, experts=(1, 2), batch_sizes=(2, 4), seq_len=8, steps=1, warmup=0, d_model=16,
              n_heads=2, d_ff=16, n_layers=1)
    rows = step_time_sweep(routers=("switch", "random"), **kw)
    assert [(r["router"], r["num_experts"], r["batch_size"]) for r in rows] == [
        ("dense", 1, 2), ("dense", 1, 4), ("switch", 2, 2), ("switch", 2, 4), ("random", 2, 2), ("random", 2, 4)]
    assert all(r["step_s"] > 0 for r in rows)
    skipped = step_time_sweep(routers=("hash",), time_budget_s=0.0, **kw)
    assert all(r.get("error") == "skipped: time budget" for r in skipped)


def test_summarize_and_table():
    rows = [dict(router=r, num_experts=n, total=10, active=5, step_s=s, tokens_per_s=1 / s, test_acc=a, cv=c, drop_frac=0.0)
            for r, n, s, a, c in [("switch", 4, 0.02, 0.8, 0.1), ("switch", 4, 0.04, 0.9, 0.3), ("random", 4, 0.015, 0.7, 0.0),
                                  ("dense", 1, 0.01, 0.75, None)]]
    s = {r["router"]: r for r in summarize(rows)}
    assert math.isclose(s["switch"]["acc_mean"], 0.85) and math.isclose(s["switch"]["acc_std"], statistics.stdev([0.8, 0.9]))
    assert math.isclose(s["switch"]["step_ms"], 30.0) and math.isclose(s["random"]["step_vs_switch"], 0.5)
    assert s["dense"]["step_vs_switch"] is None and s["dense"]["cv"] is None and s["random"]["acc_std"] == 0.0
    df = results_table(summarize(rows))
    assert list(df["router"]) == ["switch", "random", "dense"]


def test_show_study(tmp_path, capsys):
    import matplotlib; matplotlib.use("Agg")
    assert show_study(tmp_path) is None
    assert "No routing study measured yet" in capsys.readouterr().out
    rows = [dict(router="switch", num_experts=4, total=10, active=5, step_s=0.02, tokens_per_s=50.0, test_acc=0.8, cv=0.1,
                 drop_frac=0.0)]
    sweep = [dict(router="random", num_experts=4, batch_size=b, total=10, active=5, step_s=0.01 * b, tokens_per_s=1.0)
             for b in (128, 256)] + [dict(router="hash", num_experts=8, batch_size=512, total=1, active=1, error="out of memory")]
    save_result(tmp_path / "routing_study.json", dict(text=dict(rows=rows), sweep=dict(rows=sweep)), wall_time_s=1.0)
    out = show_study(tmp_path)
    assert list(out["summary"]["router"]) == ["switch"] and len(out["sweep"]) == 3


def test_experiment_script_help_and_sweep_only(tmp_path):
    r = subprocess.run([sys.executable, "experiments/routing_study.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "--time-budget-s" in r.stdout and "--quick" in r.stdout
    out = tmp_path / "rs.json"
    r = subprocess.run([sys.executable, "experiments/routing_study.py", "--quick", "--skip-text", "--skip-vit", "--out", str(out),
                        "--vit-out", str(tmp_path / "v.json")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert rec["quick"] and rec["text"] is None and len(rec["sweep"]["rows"]) == 21
