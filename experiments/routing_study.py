"""Routing study (chapters `vit` and `routing_study`): is a learned router worth its cost?

Text: on the full IMDB data, the Switch Transformer classifier with dense (1 expert), learned (Switch), random and
hash routing at equal active parameters per token, 3 seeds, short training (bf16 on CUDA); test accuracy, step time
(CUDA-synchronised, warm-up excluded), tokens/s and expert load balance; and the step-time sweep over 1/4/8 experts
x batch 128/256/512 (synthetic full-length batches, untrained models). Vision: the ViT parameter table (the reference's 12,798,490 / 12,812,938 / 12,798,490) and
dense / Switch / random / hash ViTs trained on the seeded synthetic shapes (and CIFAR-10 with --cifar-dir).

    python experiments/routing_study.py --data-dir /path/to/data                    # all of it, bounded by --time-budget-s 420
    python experiments/routing_study.py --data-dir D --cifar-dir /path/to/cifar10   # + CIFAR-10 ViTs if time is left
    python experiments/routing_study.py --quick                                     # CPU smoke run on the samples -> /tmp

Writes results/routing_study.json (text + sweep) and results/vit_synthetic.json (ViT) with
moe_course.core.save_result, rewritten after every run, so a killed run keeps what it finished. --time-budget-s
bounds the whole script. Phases, in order: the sweep (skips configurations after 20% of the budget), the text
comparison (does not start a seed that would end after 75%), the ViT runs (none that would end after 95%).
"""
from __future__ import annotations
import argparse, os, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when imported, not run, e.g. by tests
from common import ROOT, find_data_dir  # experiments/common.py


# Full-size settings (GPU) and the --quick smoke settings (CPU, bundled samples).
TEXT = dict(max_len=256, vocab_size=20000, d_model=128, n_heads=4, d_ff=256, n_layers=2, capacity_factor=1.25,
            dropout=0.1, epochs=2, batch_size=128, eval_batch_size=512, lr=2e-3, weight_decay=0.05,
            scheduler="cosine", warmup_frac=0.1, patience=0, aux_weight=0.01, label_smoothing=0.0, progress=False)
TEXT_QUICK = dict(TEXT, max_len=64, vocab_size=2000, d_model=32, n_heads=2, d_ff=64, n_layers=1, epochs=1,
                  batch_size=32, eval_batch_size=128)
SWEEP = dict(experts=(1, 4, 8), batch_sizes=(128, 256, 512), routers=("switch", "random", "hash"), seq_len=256,
             steps=10, warmup=3, vocab_size=20000, d_model=128, n_heads=4, d_ff=256, n_layers=2)
SWEEP_QUICK = dict(SWEEP, batch_sizes=(8, 16, 32), seq_len=64, steps=3, warmup=1, vocab_size=2000, d_model=32,
                   n_heads=2, d_ff=64, n_layers=1)
VIT = dict(patch_size=4, d_model=128, n_heads=4, n_layers=4, d_ff=256, num_experts=4, augment_pad=2, augment_flip=True)
VIT_DATA = dict(n_train=15000, n_test=2000, epochs=8, batch_size=256, lr=2e-3)
VIT_QUICK = dict(VIT, patch_size=8, d_model=32, n_layers=1, d_ff=64)
VIT_DATA_QUICK = dict(n_train=600, n_test=200, epochs=1, batch_size=64, lr=3e-3)
VIT_KINDS = ("dense", "dense-all", "switch", "random", "hash")   # dense = 1 expert; dense-all = all N experts


def fmt(x, digits=4) -> str: return "-" if x is None else f"{x:.{digits}f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="folder with imdb/{train,test}.parquet (default $MOE_COURSE_DATA)")
    ap.add_argument("--cifar-dir", default=None, help="CIFAR-10 Parquet folder or image folder (optional)")
    ap.add_argument("--out", default=None, help="text + sweep record (default results/routing_study.json)")
    ap.add_argument("--vit-out", default=None, help="ViT record (default results/vit_synthetic.json)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the text comparison (0, 1, ...)")
    ap.add_argument("--num-experts", type=int, default=4, help="experts of the text comparison")
    ap.add_argument("--time-budget-s", type=float, default=420, help="wall-clock budget of the whole script")
    ap.add_argument("--skip-text", action="store_true"); ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-vit", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny CPU smoke run on the bundled samples, writes to /tmp")
    a = ap.parse_args(argv)

    t_start = time.perf_counter()
    import torch
    from moe_course.core import save_result, device_info
    from moe_course.data import load_text_dataset
    from moe_course import routing_study as rs
    from moe_course import vit as V

    elapsed = lambda: time.perf_counter() - t_start
    budget = min(a.time_budget_s, 110) if a.quick else a.time_budget_s
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "moe_course_quick"
    out = Path(a.out or (tmp / "routing_study.json" if a.quick else ROOT / "results" / "routing_study.json"))
    vit_out = Path(a.vit_out or (tmp / "vit_synthetic.json" if a.quick else ROOT / "results" / "vit_synthetic.json"))
    text_cfg, sweep_cfg = (TEXT_QUICK, SWEEP_QUICK) if a.quick else (TEXT, SWEEP)
    vit_cfg, vit_data = (VIT_QUICK, VIT_DATA_QUICK) if a.quick else (VIT, VIT_DATA)
    seeds = list(range(1 if a.quick else a.seeds))
    info = device_info()
    print(f"device: {info['device']} · budget {budget:.0f}s · out {out} · {vit_out}", flush=True)
    if info["cuda"]: torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
    elif a.quick: torch.set_num_threads(1)   # tiny CPU models: one thread beats two on a small shared machine

    record = dict(kind="routing_study", quick=a.quick, budget_s=budget, text=None, sweep=None)
    def save(): save_result(out, record, wall_time_s=elapsed())

    # -- step-time sweep ---------------------------------------------------------------------------------------------
    if not a.skip_sweep:
        left = max(0.0, 0.2 * budget - elapsed())
        print(f"[{elapsed():5.0f}s] sweep: experts {sweep_cfg['experts']} x batch {sweep_cfg['batch_sizes']} ({left:.0f}s)", flush=True)
        kw = {k: v for k, v in sweep_cfg.items()}
        try: rows = rs.step_time_sweep(time_budget_s=left, max_len=kw["seq_len"], **kw)
        except Exception as e:
            import traceback; traceback.print_exc(); rows = []; record["sweep_error"] = repr(e)
        record["sweep"] = dict(config={k: v for k, v in sweep_cfg.items()}, rows=rows); save()
        for r in rows:
            msg = r.get("error") or f"{1e3 * r['step_s']:7.2f} ms  {r['tokens_per_s']:10.0f} tok/s"
            print(f"  {r['router']:6s} N={r['num_experts']} B={r['batch_size']:4d}  {msg}", flush=True)

    # -- text comparison -------------------------------------------------------------------------------------------
    if not a.skip_text:
        if a.quick: dsd, src = load_text_dataset("imdb", source="sample"), "sample"
        else:
            data_dir = find_data_dir(a.data_dir)
            if data_dir is None: raise SystemExit("No IMDB data: pass --data-dir (folder with imdb/train.parquet) or use --quick")
            dsd, src = load_text_dataset("imdb", source="local", data_dir=data_dir), data_dir
        print(f"IMDB from {src}: {len(dsd['train'])} train / {len(dsd['test'])} test", flush=True)
        record["text"] = dict(source=str(src), config=dict(text_cfg, num_experts=a.num_experts, seeds=seeds), rows=[])
        # compare_routers stops before a seed once the text phase's share (75%) of the budget is used
        def partial(rows): record["text"].update(rows=list(rows), summary=rs.summarize(rows)); save()
        try:
            rows = rs.compare_routers(seeds=seeds, num_experts=a.num_experts, dsd=dsd, source="local" if not a.quick else "sample",
                                      time_budget_s=max(0.0, 0.75 * budget - elapsed()), on_row=partial,
                                      log=lambda s: print(f"[{elapsed():5.0f}s] {s}", flush=True), **text_cfg)
            partial(rows)
        except Exception as e:   # keep the runs that finished, go on with the ViT
            import traceback; traceback.print_exc(); record["text"]["error"] = repr(e); save()
        for r in record["text"].get("summary") or []:
            print(f"  {r['router']:6s} acc {fmt(r['acc_mean'])} ± {fmt(r['acc_std'])} (n={r['seeds']})  "
                  f"step {fmt(r['step_ms'], 1)} ms  {fmt(r['tokens_per_s'], 0)} tok/s  cv {fmt(r['cv'])}  "
                  f"vs switch {fmt(r['step_vs_switch'], 3)}", flush=True)
        del dsd

    # -- ViT: parameter table, synthetic shapes, CIFAR-10 ------------------------------------------------------------
    if not a.skip_vit:
        vrec = dict(kind="vit_synthetic", quick=a.quick, reference_config=V.VIT_REFERENCE,
                    param_table=V.vit_param_table(), model=vit_cfg, data=vit_data, runs=[], cifar=None)
        counted = {k: sum(p.numel() for p in m.parameters()) for k, m in V.reference_vits().items()}
        vrec["param_table_counted"] = counted
        print(f"[{elapsed():5.0f}s] ViT reference parameters (counted): {counted}", flush=True)
        save_result(vit_out, vrec, wall_time_s=elapsed())
        vd = dict(vit_data)
        dls = V.shapes_loaders(vd.pop("n_train"), vd.pop("n_test"), batch_size=vd["batch_size"], seed=0)
        def run_vit(kind, loaders, extra=None):
            ffn, kw = ("dense", dict(vit_cfg, num_experts=1)) if kind == "dense" else \
                      ("dense", dict(vit_cfg)) if kind == "dense-all" else (kind, dict(vit_cfg))
            r = V.train_vit(ffn, loaders, epochs=vd["epochs"], lr=vd["lr"], batch_size=vd["batch_size"], **(kw | (extra or {})))
            r["kind"] = kind; r.pop("history", None)
            print(f"[{elapsed():5.0f}s] ViT {kind:9s} test acc {fmt(r['test_acc'])}  {r['wall_time_s']:.1f}s  {r['params']}", flush=True)
            return r
        last = 0.0   # duration of the previous model: don't start one that would end after 95% of the budget
        for kind in VIT_KINDS:
            if elapsed() + last > 0.95 * budget: print(f"time budget: skipping ViT {kind}"); continue
            t0 = elapsed()
            try: vrec["runs"].append(run_vit(kind, dls))
            except Exception as e:
                import traceback; traceback.print_exc(); vrec["runs"].append(dict(kind=kind, error=repr(e)))
            last = elapsed() - t0; save_result(vit_out, vrec, wall_time_s=elapsed())
        if a.cifar_dir:
            if elapsed() > 0.8 * budget: print("time budget: skipping CIFAR-10")
            else:
                cif = V.load_cifar10(a.cifar_dir)   # raises FileNotFoundError with a hint if the folder is wrong
                cdl = V.image_loaders(cif["train"], cif["test"], batch_size=256)
                vrec["cifar"] = dict(epochs=vd["epochs"], runs=[])
                for kind in ("dense", "switch", "random"):
                    if elapsed() + last > 0.97 * budget: print(f"time budget: skipping CIFAR ViT {kind}"); continue
                    t0 = elapsed(); vrec["cifar"]["runs"].append(run_vit(kind, cdl, dict(augment_pad=4))); last = elapsed() - t0
                    save_result(vit_out, vrec, wall_time_s=elapsed())
        save_result(vit_out, vrec, wall_time_s=elapsed())
    save()
    print(f"done in {elapsed():.0f}s -> {out}, {vit_out}", flush=True)


if __name__ == "__main__":
    main()
