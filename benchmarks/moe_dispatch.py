"""Forward+backward throughput of a dense FFN vs Switch layers, all measured in one process, as ratios to dense.

Variants (learned router unless named otherwise; capacity factor 1.25 by default):
  dense          ResNetFeedForward of the same width (the baseline: ratio 1.0)
  grouped        moe_course.moe.Switch, dispatch="grouped" (stacked experts, on-device sort, grouped GEMM)
  padded         Switch, dispatch="padded" (capacity buffer [N, C, d], one batched matmul)
  einsum         Switch, dispatch="einsum" (one-hot dispatch tensor, read by gathers)
  random         Switch with the random router, grouped dispatch
  hf             transformers' SwitchTransformersSparseMLP (capacity per sequence, bias-free experts): outside reference
  legacy-index, legacy-einsum, legacy-random
                 the course's layer before stacked experts (benchmarks/_legacy_switch.py: ModuleList, .tolist(),
                 CPU generator), so that before and after come from the same run

Each Switch layer has `num_experts` experts of the dense FFN's shape, so per token it does about the dense FLOPs
plus routing and dispatch (fewer when tokens are dropped at capacity). The last column is the random router's
step time over the learned router's (grouped dispatch): below 1 means random routing is cheaper.

    python benchmarks/moe_dispatch.py                       # CPU, fp32, 1 thread, process-CPU-time clock
    python benchmarks/moe_dispatch.py --repeats 5           # more interleaved repeats on a busy machine
    python benchmarks/moe_dispatch.py --device cuda --dtype bf16 --out results/moe_dispatch_h200.json
    python benchmarks/moe_dispatch.py --smoke               # tiny shapes, seconds: checks the script runs

Timings exclude warm-up iterations and are CUDA-synchronised; the variants are measured in interleaved rounds
(`--repeats`) and the best round is kept, so a busy machine slows every variant alike.
"""
from __future__ import annotations
import argparse, math, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))          # _legacy_switch
from moe_course.moe import ResNetFeedForward, Switch

# (tokens, d_model, d_ff, num_experts)
SIZES = {
    "cpu": [(512, 64, 256, 4), (1024, 128, 256, 8), (2048, 128, 256, 16), (4096, 256, 1024, 16)],
    "cuda": [(4096, 512, 2048, 8), (16384, 512, 2048, 8), (16384, 512, 2048, 32), (65536, 768, 3072, 8)],
    "targets": [(1024, 128, 256, 8), (4096, 256, 1024, 16)],        # the CPU targets of issue 11
    "gpu-targets": [(16384, 512, 2048, 8), (16384, 512, 2048, 32)],  # the H200 targets of issue 11
    "smoke": [(256, 32, 64, 4)],
}
VARIANTS = ["dense", "grouped", "padded", "einsum", "random", "hf", "legacy-index", "legacy-einsum", "legacy-random"]


def hf_sparse_mlp(d, d_ff, n_exp, cf, seq_len):
    "transformers' Switch MLP, capacity ceil(cf * seq_len / N) per sequence (HF groups by sequence)."
    from transformers import SwitchTransformersConfig
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersSparseMLP
    cfg = SwitchTransformersConfig(d_model=d, d_ff=d_ff, num_experts=n_exp, expert_capacity=math.ceil(cf * seq_len / n_exp),
                                   router_bias=False, router_jitter_noise=0.0, router_dtype="float32", dropout_rate=0.0)
    return SwitchTransformersSparseMLP(cfg)


def make(variant: str, d: int, d_ff: int, n_exp: int, cf: float, seq_len: int):
    if variant == "dense": return ResNetFeedForward(d, d_ff)
    if variant == "hf": return hf_sparse_mlp(d, d_ff, n_exp, cf, seq_len)
    if variant.startswith("legacy"):
        from _legacy_switch import LegacySwitch
        kind = variant.split("-")[1]
        return LegacySwitch(d, d_ff, n_exp, cf, router="random" if kind == "random" else "switch",
                            dispatch="einsum" if kind == "einsum" else "index")
    router = "random" if variant == "random" else "switch"
    return Switch(d, d_ff, n_exp, capacity_factor=cf, router=router, dispatch="grouped" if variant == "random" else variant)


def step(model, x, dtype):
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = model(x)
        y, diag = out if isinstance(out, tuple) else (out, None)
        aux = None if diag is None else (diag["aux_loss"] if isinstance(diag, dict) else diag.aux_loss)
        loss = y.float().pow(2).mean() + (0.01 * aux if aux is not None else 0.0)
    loss.backward()
    x.grad = None; model.zero_grad(set_to_none=True)   # as a training step does


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize()


def tokens_per_s(model, x, dtype, min_time: float, max_iters: int, clock=time.perf_counter) -> float:
    sync(x.device)
    t0, it = clock(), 0
    while it < max_iters and clock() - t0 < min_time:
        step(model, x, dtype); it += 1
    sync(x.device)
    return x.shape[0] * x.shape[1] * it / (clock() - t0)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--capacity-factor", type=float, default=1.25)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--sizes", default=None, choices=sorted(SIZES), help="size list (default: the device's)")
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--compile", action="store_true", help="torch.compile every model (the legacy layers graph-break)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--min-time", type=float, default=None, help="seconds per measurement (default 0.3 CPU, 0.5 GPU)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds, the best is kept (default 3)")
    p.add_argument("--max-iters", type=int, default=200)
    p.add_argument("--skip-einsum-above", type=int, default=20000, help="skip einsum above this many tokens (~cf*n^2 entries)")
    p.add_argument("--clock", default=None, choices=["wall", "cpu"],
                   help="wall: perf_counter (default on CUDA); cpu: process CPU time (default on CPU: robust to other "
                        "processes on a shared machine; use with --threads 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, one short round: checks that everything runs")
    p.add_argument("--out", default=None, help="optional JSON record (moe_course.core.save_result)")
    return p.parse_args(argv)


def main(argv=None):
    a = parse(argv)
    dev = torch.device(a.device)
    dtype = dict(fp32=torch.float32, bf16=torch.bfloat16)[a.dtype]
    min_time = a.min_time if a.min_time is not None else (0.05 if a.smoke else 0.5 if dev.type == "cuda" else 0.3)
    clock_name = a.clock or ("wall" if dev.type == "cuda" else "cpu")
    clock = time.perf_counter if clock_name == "wall" else time.process_time
    if a.threads or dev.type == "cpu": torch.set_num_threads(a.threads or 1)
    repeats = a.repeats or (1 if a.smoke else 3)
    sizes = SIZES["smoke" if a.smoke else a.sizes or ("cuda" if dev.type == "cuda" else "cpu")]
    variants = ["dense"] + [v for v in a.variants if v != "dense"]
    torch.manual_seed(0)
    t_start, rows = time.perf_counter(), []
    for tokens, d, d_ff, n_exp in sizes:
        seq = min(a.seq_len, tokens)
        x = torch.randn(tokens // seq, seq, d, device=dev, requires_grad=True)   # inside a network, dL/dx is needed
        row = dict(tokens=tokens, d_model=d, d_ff=d_ff, num_experts=n_exp, **{v: None for v in variants})
        models = {}
        for v in variants:
            if v == "einsum" or v == "legacy-einsum":
                if tokens > a.skip_einsum_above: continue
            torch.manual_seed(0)
            m = make(v, d, d_ff, n_exp, a.capacity_factor, seq).to(dev).train()
            models[v] = torch.compile(m) if a.compile else m
        for v, model in list(models.items()):
            try:
                for _ in range(a.warmup): step(model, x, dtype)   # warm-up (and compilation), not timed
            except torch.OutOfMemoryError:
                print(f"out of memory: {v} at {tokens} tokens (reported as skipped)")
                del models[v]; torch.cuda.empty_cache()
        for _ in range(repeats):   # interleave variants and keep the best: robust to a busy machine
            for v, model in list(models.items()):
                try: tps = tokens_per_s(model, x, dtype, min_time, a.max_iters, clock)
                except torch.OutOfMemoryError:
                    print(f"out of memory: {v} at {tokens} tokens (reported as skipped)")
                    del models[v]; torch.cuda.empty_cache(); continue
                row[v] = max(row[v] or 0.0, tps)
        del models
        rows.append(row)
    wall = time.perf_counter() - t_start

    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    print(f"device={dev} ({name}), dtype={a.dtype}, capacity_factor={a.capacity_factor}, threads={torch.get_num_threads()}, "
          f"clock={clock_name}, compile={a.compile}, forward+backward, best of {repeats} interleaved rounds")
    others = [v for v in variants if v != "dense"]
    head = f"{'tokens':>7} {'d':>4} {'d_ff':>5} {'N':>3} | {'dense tok/s':>12} | " + " | ".join(f"{v:>13}" for v in others)
    head += " | random/learned step" if {"grouped", "random"} <= set(variants) else ""
    print(head); print("-" * len(head))
    for r in rows:
        ratio = lambda v: f"{'skipped':>13}" if r[v] is None or not r["dense"] else f"{r[v] / r['dense']:>12.2f}x"
        dense = f"{r['dense']:>12,.0f}" if r["dense"] else f"{'skipped':>12}"
        line = f"{r['tokens']:>7} {r['d_model']:>4} {r['d_ff']:>5} {r['num_experts']:>3} | {dense} | " + " | ".join(map(ratio, others))
        if {"grouped", "random"} <= set(variants) and r["grouped"] and r["random"]:
            r["random_over_learned_step"] = r["grouped"] / r["random"]
            line += f" | {r['random_over_learned_step']:>19.2f}"
        print(line)
    print(f"(ratios = tokens/s relative to the dense FFN in the same run; total {wall:.1f}s)")
    if a.out:
        from moe_course.core import save_result
        save_result(a.out, dict(benchmark="moe_dispatch", dtype=a.dtype, capacity_factor=a.capacity_factor, compile=a.compile,
                                clock=clock_name, threads=torch.get_num_threads(), repeats=repeats, rows=rows,
                                command="python " + " ".join(sys.argv)), wall)
    return rows


if __name__ == "__main__":
    main()
