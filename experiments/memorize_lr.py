"""Is the dense equal-total baseline of chapter 17_memorize under-tuned? A small learning-rate sweep of `dense-total`
and of hash routing at the chapter's largest point (32 experts of width 16, 8,192 facts, the sweep's other settings),
so that each is compared at its own best learning rate. CPU, minutes.

    python experiments/memorize_lr.py                                   # -> results/lr_sweep_memorize_cpu.json
    python experiments/memorize_lr.py --lrs 0.01 --seeds 1 --n-facts 512 --epochs 2 --out /tmp/m.json   # smoke test

The record (moe_course.core.save_result: device, commit, wall time) is rewritten after every run.
"""
from __future__ import annotations
import argparse, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # experiments/common.py


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "results" / "lr_sweep_memorize_cpu.json"))
    ap.add_argument("--kinds", nargs="*", default=["dense-total", "hash"])
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--lrs", type=float, nargs="*", default=[3e-3, 1e-2, 3e-2])
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..n-1")
    ap.add_argument("--n-facts", type=int, default=8192)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    import torch
    from moe_course.core import save_result
    from moe_course.memorize import make_facts, memory_model, train_memory
    from moe_course.transformer import count_parameters
    torch.set_num_threads(a.threads)
    t0, rows = time.perf_counter(), []
    settings = dict(kinds=a.kinds, experts=a.experts, lrs=a.lrs, seeds=list(range(a.seeds)), n_facts=a.n_facts,
                    epochs=a.epochs, d_model=32, d_ff=16, n_layers=1, batch_size=512)
    for seed in range(a.seeds):
        facts = make_facts(a.n_facts, seed=seed)
        for kind in a.kinds:
            for lr in a.lrs:
                model = memory_model(kind, a.experts, seed=seed, d_model=32, d_ff=16, n_layers=1)
                r = train_memory(model, facts, epochs=a.epochs, batch_size=512, lr=lr, seed=seed)
                rows.append(dict(kind=kind, num_experts=a.experts, lr=lr, seed=seed, **count_parameters(model), **r))
                print(f"{kind:>12} lr {lr:g} seed {seed}: memorised {r['fraction']:.3f} ({r['wall_time_s']:.0f} s)", flush=True)
                save_result(a.out, dict(settings=settings, rows=rows), wall_time_s=time.perf_counter() - t0)
    print(f"wrote {a.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__": main()
