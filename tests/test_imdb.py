"Tests of the IMDB chapter's helpers (moe_course.imdb): the ablation grid, tables, plots and the results records."
import json, math, sys
from pathlib import Path
import pytest
from moe_course.config import get_config
from moe_course.imdb import ablation_grid, ablation_table, plot_ablation_bars, load_imdb_results

ROOT = Path(__file__).resolve().parents[1]


def record(variant, seed, acc, hist=(0.6, 0.7)):
    return dict(variant=variant, seed=seed, test_accuracy=acc, test_f1=acc, best_valid_acc=max(hist), epochs_run=len(hist),
                wall_time_s=10.0 + seed, params=dict(active=100, total=400),
                history=[dict(epoch=i + 1, valid_acc=v) for i, v in enumerate(hist)])


@pytest.mark.parametrize("preset", ["default", "imdb-switch-reference", "imdb-switch-gpu"])
def test_grid_has_no_duplicate_configs(preset):
    base = get_config(preset)
    grid = ablation_grid(base)
    import dataclasses
    keys = [json.dumps(dataclasses.asdict(dataclasses.replace(base, **ov)), sort_keys=True) for _, ov in grid]
    assert len(set(keys)) == len(keys)
    assert grid[0] == ("switch", {})
    # each variant changes exactly one field of the base
    assert all(len(ov) == 1 for _, ov in grid[1:])
    # the base's own learning rate is not run twice
    assert f"lr {base.lr:g}" not in [n for n, _ in grid]


def test_grid_flips_booleans_both_ways():
    names = lambda cfg: {n for n, _ in ablation_grid(cfg)}
    assert {"FGM", "augmentation"} <= names(get_config("default", fgm=False, augment=False))
    assert {"no FGM", "no augmentation"} <= names(get_config("default", fgm=True, augment=True))
    assert "label smoothing" in names(get_config("default", label_smoothing=0.0))


def test_table_mean_and_std_over_seeds():
    recs = [record("switch", 0, 0.80), record("switch", 1, 0.82), record("dense", 0, 0.70)]
    t = ablation_table(recs)
    assert list(t.index) == ["switch", "dense"]  # order of first appearance, not alphabetical
    assert t.loc["switch", "test_acc"] == pytest.approx(0.81)
    assert t.loc["switch", "test_acc_std"] == pytest.approx(math.sqrt(2) * 0.01, abs=1e-4)  # sample std of 2 values
    assert t.loc["switch", "seeds"] == 2 and t.loc["dense", "seeds"] == 1
    assert math.isnan(t.loc["dense", "test_acc_std"])


def test_bars_plot_every_variant_in_order():
    import matplotlib; matplotlib.use("Agg")
    recs = [record("switch", 0, 0.80), record("random routing", 0, 0.79), record("switch", 1, 0.81)]
    ax = plot_ablation_bars(recs)
    assert [l.get_text() for l in ax.get_yticklabels()] == ["switch", "random routing"]
    assert len(ax.patches) == 2


def test_load_results_missing_folder(tmp_path):
    assert load_imdb_results(tmp_path) == (None, None)
    (tmp_path / "imdb_ablations_cpu.json").write_text(json.dumps(dict(runs=[])))
    assert load_imdb_results(tmp_path, ablations="imdb_ablations_cpu.json") == (None, dict(runs=[]))


@pytest.mark.parametrize("path", sorted((ROOT / "results").rglob("*.json")), ids=lambda p: str(p.relative_to(ROOT / "results")))
def test_committed_results_are_stamped(path):
    "Every committed result says where, from which commit and how long it ran."
    rec = json.loads(path.read_text())
    assert rec["device"]["device"] and rec["device"]["torch"]
    assert len(rec["commit"].split("+")[0]) == 40
    assert rec["wall_time_s"] > 0


def test_experiment_overrides_are_checked():
    sys.path.insert(0, str(ROOT / "experiments"))
    from imdb_switch import parse_overrides
    assert parse_overrides(["lr=0.005", "fgm=false", "eval_batch_size=none"]) == dict(lr=0.005, fgm=False, eval_batch_size=None)
    with pytest.raises(SystemExit, match="unknown config field 'lrr'"): parse_overrides(["lrr=1"])
    with pytest.raises(SystemExit, match="key=value"): parse_overrides(["lr"])
