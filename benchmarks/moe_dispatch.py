"""Forward+backward throughput of a dense FFN vs Switch layers (einsum dispatch, index dispatch, random routing).

Every configuration is measured in the same process and reported as tokens/s and as a ratio to the dense
ResNetFeedForward of the same width (ratio > 1: faster than dense). The Switch layers have `num_experts` experts
of the same shape as the dense FFN, so per token they do about the same FLOPs plus routing and dispatch overhead.

    python benchmarks/moe_dispatch.py                       # CPU, small sizes (< 1 minute)
    python benchmarks/moe_dispatch.py --device cuda --dtype bf16 --out results/moe_dispatch.json

Timings exclude warm-up iterations and are CUDA-synchronised; each variant is measured `--repeats` times,
interleaved with the others, and the best is kept (the machine may be shared).
"""
from __future__ import annotations
import argparse, time

import torch

from moe_course.moe import ResNetFeedForward, Switch

# (tokens, d_model, d_ff, num_experts)
SIZES = {
    "cpu": [(512, 64, 256, 4), (1024, 128, 256, 8), (2048, 128, 256, 16)],
    "cuda": [(4096, 512, 2048, 8), (16384, 512, 2048, 8), (16384, 512, 2048, 32), (65536, 768, 3072, 8)],
}
VARIANTS = ["dense", "switch-einsum", "switch-index", "random-index"]


def make(variant: str, d: int, d_ff: int, n_exp: int, cf: float):
    if variant == "dense": return ResNetFeedForward(d, d_ff)
    router = "random" if variant.startswith("random") else "switch"
    return Switch(d, d_ff, n_exp, capacity_factor=cf, router=router, dispatch=variant.split("-")[1])


def step(model, x, dtype):
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = model(x)
        y, aux = out if isinstance(out, tuple) else (out, None)
        loss = y.float().pow(2).mean() + (0.01 * aux.aux_loss if aux is not None else 0.0)
    loss.backward()


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize()


def tokens_per_s(model, x, dtype, min_time: float, max_iters: int, clock=time.perf_counter) -> float:
    sync(x.device)
    t0, it = clock(), 0
    while it < max_iters and clock() - t0 < min_time:
        step(model, x, dtype); it += 1
    sync(x.device)
    return x.shape[0] * x.shape[1] * it / (clock() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--capacity-factor", type=float, default=1.25)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--min-time", type=float, default=None, help="seconds per measurement (default 0.3 CPU, 0.5 GPU)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved measurements per variant, the best is kept (default 2 CPU, 3 GPU)")
    p.add_argument("--max-iters", type=int, default=200)
    p.add_argument("--skip-einsum-above", type=int, default=20000, help="skip einsum above this many tokens (its dispatch tensor has ~cf*n^2 entries)")
    p.add_argument("--clock", default=None, choices=["wall", "cpu"],
                   help="wall: perf_counter (default on CUDA); cpu: process CPU time (default on CPU: robust to other "
                        "processes on a shared machine; use with --threads 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU)")
    p.add_argument("--out", default=None, help="optional JSON record (moe_course.core.save_result)")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    dtype = dict(fp32=torch.float32, bf16=torch.bfloat16)[a.dtype]
    min_time = a.min_time if a.min_time is not None else (0.5 if dev.type == "cuda" else 0.3)
    clock_name = a.clock or ("wall" if dev.type == "cuda" else "cpu")
    clock = time.perf_counter if clock_name == "wall" else time.process_time
    if a.threads or dev.type == "cpu": torch.set_num_threads(a.threads or 1)
    repeats = a.repeats or (3 if dev.type == "cuda" else 2)
    sizes = SIZES["cuda" if dev.type == "cuda" else "cpu"]
    torch.manual_seed(0)
    t_start, rows = time.perf_counter(), []
    for tokens, d, d_ff, n_exp in sizes:
        x = torch.randn(tokens // a.seq_len, a.seq_len, d, device=dev)
        row = dict(tokens=tokens, d_model=d, d_ff=d_ff, num_experts=n_exp)
        models = {v: make(v, d, d_ff, n_exp, a.capacity_factor).to(dev) for v in VARIANTS
                  if not (v == "switch-einsum" and tokens > a.skip_einsum_above)}
        for v in VARIANTS: row[v] = None
        for v, model in list(models.items()):
            try:
                for _ in range(a.warmup): step(model, x, dtype)   # warm-up, not timed
            except torch.OutOfMemoryError:
                print(f"out of memory: {v} at {tokens} tokens (reported as skipped)")
                del models[v]; model.zero_grad(set_to_none=True); torch.cuda.empty_cache()
        for _ in range(repeats):   # interleave variants and keep the best: robust to a busy machine
            for v, model in list(models.items()):
                try: tps = tokens_per_s(model, x, dtype, min_time, a.max_iters, clock)
                except torch.OutOfMemoryError:
                    print(f"out of memory: {v} at {tokens} tokens (reported as skipped)")
                    del models[v]; model.zero_grad(set_to_none=True); torch.cuda.empty_cache(); continue
                row[v] = max(row[v] or 0.0, tps)
        del models
        rows.append(row)
    wall = time.perf_counter() - t_start

    print(f"device={dev} ({torch.cuda.get_device_name(0) if dev.type == 'cuda' else 'cpu'}), dtype={a.dtype}, "
          f"capacity_factor={a.capacity_factor}, threads={torch.get_num_threads()}, clock={clock_name}, forward+backward")
    head = f"{'tokens':>7} {'d':>4} {'d_ff':>5} {'N':>3} | {'dense tok/s':>12} | " + " | ".join(f"{v:>13}" for v in VARIANTS[1:])
    print(head); print("-" * len(head))
    for r in rows:
        ratios = " | ".join(f"{'skipped':>13}" if r[v] is None or not r["dense"] else f"{r[v] / r['dense']:>12.2f}x"
                            for v in VARIANTS[1:])
        dense = f"{r['dense']:>12,.0f}" if r["dense"] else f"{'skipped':>12}"
        print(f"{r['tokens']:>7} {r['d_model']:>4} {r['d_ff']:>5} {r['num_experts']:>3} | {dense} | {ratios}")
    print(f"(ratios = tokens/s relative to the dense FFN in the same run; total {wall:.1f}s)")
    if a.out:
        from moe_course.core import save_result
        save_result(a.out, dict(benchmark="moe_dispatch", dtype=a.dtype, capacity_factor=a.capacity_factor, rows=rows), wall)
    return rows


if __name__ == "__main__":
    main()
