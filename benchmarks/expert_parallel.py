"""Expert parallelism on the CPU: where the time of one ExpertParallelSwitch layer goes, on 2 processes (gloo).

One launch starts W processes (one thread each); on each, for a few model sizes, it times (median of --reps, after a
barrier) the forward + backward of
  * the whole layer (routing, sorting, counts exchange, 2 all-to-alls, experts, combine; the backward's 2 all-to-alls),
  * the communication alone: the counts all-to-all and the 2 token all-to-alls with the layer's own split sizes,
    forward and backward (the backward runs the 2 reverse all-to-alls),
  * the local experts alone, on as many rows, with the layer's own offsets,
and prints each part as a fraction of the layer (rest = routing, sorting and combining, by difference).

    .venv/bin/python benchmarks/expert_parallel.py                 # writes results/expert_parallel_cpu.json
    .venv/bin/python benchmarks/expert_parallel.py --reps 3 --out ''   # quick look, no record
"""
import argparse, importlib, sys, time
from pathlib import Path

import torch
import torch.distributed as dist

from moe_course.core import results_dir, save_result
from moe_course.expert_parallel import ExpertParallelSwitch, all_to_all, spawn
from moe_course.moe import Switch

SIZES = ((64, 128), (256, 512), (512, 1024))


def _median(fn, reps):
    ts = []
    for _ in range(reps):
        dist.barrier(); t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def bench(rank, W, sizes, tokens, num_experts, reps):
    rows = []
    for d, f in sizes:
        torch.manual_seed(0)
        ep = ExpertParallelSwitch.from_switch(Switch(d, f, num_experts, capacity_factor=1.25))
        x = torch.randn(tokens, d, generator=torch.Generator().manual_seed(rank)).requires_grad_()

        def layer(): ep(x)[0].sum().backward()
        layer()                                                      # warm-up; records this batch's exchange
        send, recv = ep.last_exchange
        s_h, r_h, counts = send.sum(1).tolist(), recv.sum(1).tolist(), send.flatten().clone()
        xs = torch.randn(sum(s_h), d, requires_grad=True)

        def comm():
            got = torch.empty_like(counts); dist.all_to_all_single(got, counts)   # the counts
            all_to_all(all_to_all(xs, r_h, s_h) * 1.0, s_h, r_h).sum().backward()  # tokens out and back, fwd + bwd
        xl, offsets = torch.randn(sum(r_h), d, requires_grad=True), recv.sum(0).cumsum(0)

        def experts(): ep.experts(xl, offsets).sum().backward()
        comm(); experts()
        t_layer, t_comm, t_exp = (_median(g, reps) for g in (layer, comm, experts))
        rows.append(dict(d_model=d, d_ff=f, tokens=tokens, rows_sent=sum(s_h), rows_crossing=sum(s_h) - s_h[rank],
                         rows_received=sum(r_h), layer_ms=1e3 * t_layer, a2a_ms=1e3 * t_comm, experts_ms=1e3 * t_exp,
                         a2a_frac=t_comm / t_layer, experts_frac=t_exp / t_layer, rest_frac=1 - (t_comm + t_exp) / t_layer))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--tokens", type=int, default=2048, help="tokens per rank (e.g. 16 sequences of 128)")
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--out", default=str(results_dir() / "expert_parallel_cpu.json"), help="record ('' for none)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    # the children import `bench` by name: hand them this file's module (its folder is on sys.path), not __main__
    this = importlib.import_module(Path(__file__).stem)
    per_rank = spawn(this.bench, a.world_size, (SIZES, a.tokens, a.experts, a.reps), timeout=600)
    wall = time.perf_counter() - t0
    print(f"ExpertParallelSwitch forward+backward on {a.world_size} CPU processes (gloo, 1 thread each), "
          f"{a.experts} experts, {a.tokens} tokens per rank, median of {a.reps}")
    for r, rows in enumerate(per_rank):
        for row in rows:
            print(f"rank {r}  d={row['d_model']:4d} d_ff={row['d_ff']:5d}: layer {row['layer_ms']:8.2f} ms | all-to-all "
                  f"{row['a2a_frac']:6.1%} | experts {row['experts_frac']:6.1%} | rest {row['rest_frac']:6.1%} | rows sent "
                  f"{row['rows_sent']}, crossing {row['rows_crossing']}")
    rows = [dict(row, **{k: sum(pr[i][k] for pr in per_rank) / len(per_rank) for k in
                         ("layer_ms", "a2a_ms", "experts_ms", "a2a_frac", "experts_frac", "rest_frac")})
            for i, row in enumerate(per_rank[0])]
    print(f"wall time {wall:.1f} s")
    if a.out:
        cmd = " ".join([".venv/bin/python", "benchmarks/expert_parallel.py", *sys.argv[1:]])
        out = save_result(a.out, dict(command=cmd, world_size=a.world_size, backend="gloo", threads_per_process=1,
                                      num_experts=a.experts, tokens_per_rank=a.tokens, reps=a.reps, rows=rows,
                                      per_rank=per_rank, note="rows: the mean of the ranks' medians; fractions of the "
                                      "layer's forward+backward time, parts timed separately, rest by difference"),
                          wall_time_s=wall)
        print(f"wrote {out}")


if __name__ == "__main__": main()
