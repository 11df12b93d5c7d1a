"""Is random (or hash) routing faster per training step than the learned Switch router? Ratios in one process.

    python benchmarks/routing_step_time.py                       # CPU-sized defaults
    python benchmarks/routing_step_time.py --batch-sizes 128 256 512 --seq-len 256 --d-model 128   # GPU-sized

For each number of experts and batch size, times full training steps (forward, loss, backward, AdamW) of the
routing study's models with `moe_course.routing_study.time_train_steps` (CUDA-synchronised, warm-up excluded),
repeating the routers in interleaved rounds so that machine noise hits all of them alike, and prints the median
step time and its ratio to the learned (Switch) router: < 1 means faster than learned routing.
"""
from __future__ import annotations
import argparse, statistics, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=128); ap.add_argument("--d-ff", type=int, default=256)
    ap.add_argument("--n-layers", type=int, default=2); ap.add_argument("--vocab-size", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=5); ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (median over rounds)")
    a = ap.parse_args(argv)
    import torch
    from moe_course.core import device_info
    from moe_course.routing_study import study_model, text_batch, time_train_steps
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"{device_info()['device']} · torch threads {torch.get_num_threads()} · d={a.d_model} d_ff={a.d_ff} "
          f"L={a.n_layers} T={a.seq_len} · median of {a.rounds} rounds x {a.steps} steps (warm-up {a.warmup})")
    kw = dict(d_model=a.d_model, n_heads=4, d_ff=a.d_ff, n_layers=a.n_layers, max_len=a.seq_len)
    print(f"{'N':>3} {'batch':>6} {'router':>7} {'ms/step':>9} {'vs switch':>10}")
    for n in a.experts:
        models = {r: study_model(r, a.vocab_size, num_experts=n if r != "dense" else 1, **kw).to(dev)
                  for r in ("dense", "switch", "random", "hash")}
        for bs in a.batch_sizes:
            batch = text_batch(bs, a.seq_len, a.vocab_size, device=dev)
            times = {r: [] for r in models}
            for _ in range(a.rounds):
                for r, m in models.items(): times[r].append(time_train_steps(m, batch, a.steps, a.warmup)["step_s"])
            med = {r: statistics.median(t) for r, t in times.items()}
            for r in models:
                print(f"{n:>3} {bs:>6} {r:>7} {1e3 * med[r]:9.2f} {med[r] / med['switch']:10.3f}")


if __name__ == "__main__":
    main()
