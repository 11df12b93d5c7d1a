"""Switch Transformer on the full IMDB data: (a) the `imdb-switch-gpu` preset (goal >= 89% test accuracy on the
official 25,000-review test set in <= 3 minutes on one H100), (b) the ablation grid of the reference project.

    python experiments/imdb_switch.py --data-dir /path/to/data                 # main run + ablations
    python experiments/imdb_switch.py --data-dir D --skip-ablations            # main run only
    python experiments/imdb_switch.py --data-dir D --seeds 3 --time-budget-s 1200
    python experiments/imdb_switch.py --quick                                  # CPU smoke test on the samples (-> /tmp)

Writes results/imdb_switch.json and results/imdb_ablations.json (moe_course.core.save_result: device, commit,
wall time, seed, config, metrics, history). The ablation file is rewritten after every run, so a killed script
keeps what it finished. The dataset is loaded and the tokenizer trained once, then reused by every run.
"""
from __future__ import annotations
import argparse, dataclasses, json, os, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when imported, not run, e.g. by tests
from common import ROOT, find_data_dir  # experiments/common.py


def parse_overrides(pairs) -> dict:
    "['lr=0.002', 'fgm=false'] -> typed overrides of TrainConfig fields."
    from moe_course.cli import _field_type
    from moe_course.config import TrainConfig
    types = {f.name: _field_type(f) for f in dataclasses.fields(TrainConfig)}
    out = {}
    for p in pairs or []:
        if "=" not in p: raise SystemExit(f"--set expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        if k not in types: raise SystemExit(f"--set: unknown config field {k!r}")
        t = types[k]
        out[k] = (v.lower() in ("1", "true", "yes")) if t is bool else (None if v.lower() == "none" else t(v))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="folder with imdb/{train,test}.parquet (default $MOE_COURSE_DATA)")
    ap.add_argument("--out", default=None, help="main-run record (default results/imdb_switch.json)")
    ap.add_argument("--ablations-out", default=None, help="ablation record (default results/imdb_ablations.json)")
    from moe_course.config import PRESETS
    ap.add_argument("--preset", default="imdb-switch-gpu", choices=sorted(PRESETS), help="config of the main run")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides of the main config, e.g. epochs=4 fgm=false (the ablations start from it too)")
    ap.add_argument("--ablation-epochs", type=int, default=3, help="epochs per ablation run (shorter schedule)")
    ap.add_argument("--ablation-max-len", type=int, default=256, help="max_len of the ablation runs")
    ap.add_argument("--variants", type=int, nargs="*", default=None,
                    help="indices into the ablation grid to run (default: all), e.g. to split it over processes")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per ablation variant (0, 1, ...)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the main run")
    ap.add_argument("--time-budget-s", type=float, default=420, help="stop starting ablation runs after this (whole script)")
    ap.add_argument("--skip-main", action="store_true"); ap.add_argument("--skip-ablations", action="store_true")
    ap.add_argument("--run-dir", default=None, help="checkpoints/curves of the main run (default runs/imdb-switch-gpu)")
    ap.add_argument("--quick", action="store_true", help="tiny CPU smoke run on the bundled samples, writes to /tmp")
    a = ap.parse_args(argv)

    t_start = time.perf_counter()
    main_proc = int(os.environ.get("RANK", "0")) == 0  # under `accelerate launch`, only rank 0 writes results
    import torch
    from moe_course.config import get_config
    from moe_course.core import save_result, device_info
    from moe_course.data import load_text_dataset
    from moe_course.imdb import train, build_loaders
    from moe_course.imdb import ablation_grid, run_ablations

    if a.quick:
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "moe_course_quick"
        out = Path(a.out or tmp / "imdb_switch.json"); ab_out = Path(a.ablations_out or tmp / "imdb_ablations.json")
        run_dir = Path(a.run_dir or tmp / "run")
        cfg = get_config("quick", name="imdb-switch-quick", source="sample", epochs=2, max_len=64, seed=a.seed)
        ab_base = dataclasses.replace(cfg, epochs=1)
        dsd = load_text_dataset("imdb", source="sample")
        budget = min(a.time_budget_s, 100)
    else:
        data_dir = find_data_dir(a.data_dir)
        if data_dir is None:
            raise SystemExit("No IMDB data found: pass --data-dir (a folder with imdb/train.parquet and imdb/test.parquet)"
                             " or set MOE_COURSE_DATA.")
        out = Path(a.out or ROOT / "results" / "imdb_switch.json")
        ab_out = Path(a.ablations_out or ROOT / "results" / "imdb_ablations.json")
        run_dir = Path(a.run_dir or ROOT / "runs" / "imdb-switch-gpu")
        cfg = get_config(a.preset, source="local", data_dir=data_dir, progress=False, seed=a.seed, **parse_overrides(a.set))
        ab_base = dataclasses.replace(cfg, epochs=a.ablation_epochs, max_len=min(cfg.max_len, a.ablation_max_len),
                                      checkpoint=False)
        dsd = load_text_dataset("imdb", source="local", data_dir=data_dir)
        budget = a.time_budget_s
    print(f"device: {device_info()['device']}; train {len(dsd['train'])}, test {len(dsd['test'])} reviews; "
          f"data loaded in {time.perf_counter() - t_start:.1f} s", flush=True)

    # one tokenizer for every run (trained on the training part of the split, as make_loaders does); the main
    # run reuses these loaders, the ablations (shorter inputs) re-encode once with the same tokenizer
    t0 = time.perf_counter()
    dls_main = build_loaders(cfg, dsd=dsd)
    tok = dls_main["tokenizer"]
    tok_s = time.perf_counter() - t0
    print(f"tokenizer: {tok.get_vocab_size()} tokens; trained and data encoded in {tok_s:.1f} s", flush=True)

    if not a.skip_main:
        print(f"=== main run: {cfg.name}", flush=True)
        res = train(cfg, out_dir=run_dir, dls=dls_main, overwrite=True)   # a rerun replaces the record's run
        t = res["test"] or {}
        train_s = sum(h["epoch_time_s"] for h in res["history"])
        metrics = dict(test_accuracy=t.get("accuracy"), test_f1=t.get("f1"), test_loss=t.get("loss"),
                       best_valid_acc=res["best"]["valid_acc"], best_epoch=res["best"]["epoch"],
                       epochs_run=res["epochs_run"], train_time_s=train_s, run_time_s=res["wall_time_s"],
                       tokenizer_time_s=tok_s, reference_accuracy=0.8512, goal_accuracy=0.89, goal_time_s=180)
        payload = dict(experiment="imdb_switch", preset="quick" if a.quick else a.preset, seed=cfg.seed, status=res["status"],
                       message=res["message"], config=res["config"], metrics=metrics, params=res["params"],
                       sizes=res["sizes"], history=res["history"], quick=a.quick,
                       note="sample data: not comparable" if a.quick else "full IMDB; test = official 25,000 reviews")
        if main_proc: save_result(out, payload, wall_time_s=time.perf_counter() - t_start)
        print(f"main: test accuracy {metrics['test_accuracy']}, training {train_s:.0f} s, "
              f"run {res['wall_time_s']:.0f} s -> {out}", flush=True)

    del dls_main  # free the encoded full-length data before the ablations
    if not a.skip_ablations:
        grid = ablation_grid(ab_base)
        if a.variants is not None: grid = [grid[i] for i in a.variants]
        seeds = list(range(a.seeds))
        print(f"=== ablations ({len(grid)} variants x {len(seeds)} seeds, {ab_base.epochs} epochs, max_len {ab_base.max_len};"
              f" budget {budget:.0f} s, {time.perf_counter() - t_start:.0f} s used)", flush=True)
        def write(runs):
            if main_proc: save_result(ab_out, dict(experiment="imdb_ablations", base_config=dataclasses.asdict(ab_base),
                                     grid=[dict(variant=n, overrides=o) for n, o in grid], seeds=seeds, runs=runs,
                                     complete=len(runs) == len(grid) * len(seeds), quick=a.quick),
                        wall_time_s=time.perf_counter() - t_start)
        runs = run_ablations(ab_base, grid, seeds=seeds, dsd=dsd, tok=tok, time_budget_s=budget, on_result=write,
                             t_start=t_start)
        for r in runs: print(f"{r['variant']:<22} seed {r['seed']}: test {r['test_accuracy']}  ({r['wall_time_s']:.0f} s)")
        print(f"-> {ab_out}" if runs else "no ablation run fitted in the time budget; nothing written")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
