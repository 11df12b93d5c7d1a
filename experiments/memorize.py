"""Experts as memory (chapter 17_memorize): facts memorised against experts at equal active parameters, for
learned, random and hash routing, and a dense model of equal total parameters. CPU, minutes.

    python experiments/memorize.py                         # full sweep, 3 seeds -> results/memorize_cpu.json
    python experiments/memorize.py --seeds 1 --experts 1 4 --n-facts 1024 --epochs 3 --out /tmp/m.json   # smoke test

The record (moe_course.core.save_result: device, commit, wall time) is rewritten after every run, so a killed
script keeps what it finished.
"""
from __future__ import annotations
import argparse, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # experiments/common.py


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "results" / "memorize_cpu.json"))
    ap.add_argument("--experts", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..n-1")
    ap.add_argument("--n-facts", type=int, default=8192)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    a = ap.parse_args(argv)
    import torch
    from moe_course.core import save_result
    from moe_course.memorize import memorize_sweep, summarize_memory
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    settings = dict(experts=a.experts, seeds=list(range(a.seeds)), n_facts=a.n_facts, epochs=a.epochs)
    save = lambda rows: save_result(a.out, dict(settings=settings, rows=rows, summary=summarize_memory(rows)),
                                    wall_time_s=time.perf_counter() - t0)
    rows = memorize_sweep(experts=a.experts, seeds=range(a.seeds), n_facts=a.n_facts, epochs=a.epochs, on_row=save)
    save(rows)
    for r in summarize_memory(rows):
        print(f"{r['kind']:>12} N={r['num_experts']:>2}  active {r['active']:>6}  total {r['total']:>7}  "
              f"memorised {r['fraction']:.3f} ± {r['fraction_std']:.3f}")
    print(f"wrote {a.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
