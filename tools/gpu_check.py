"""Issue 11's GPU checks that are not the dispatch benchmark: a training step under sync-debug mode, and the
training throughput of the `imdb-switch-gpu` model, eager and compiled. Run by `tools/gpu_check.sh`.

    python tools/gpu_check.py sync --out results/sync_check_h200.json
    python tools/gpu_check.py throughput --out results/imdb_switch_throughput_h200.json
    python tools/gpu_check.py sync --cpu-smoke --out /tmp/sync.json     # tiny model on the CPU: checks the script

`sync`: two warm-up steps, then one `moe_course.learner.train_step` (forward, loss, backward, clipping, AdamW, the
cosine schedule) with `torch.cuda.set_sync_debug_mode("error")`: any host sync raises. Checked for the eager and the
compiled model, and, separately, with FGM on (FGM's `attack` asks whether the gradient norm is finite: one sync).
`throughput`: `train_one_epoch` over synthetic batches shaped like IMDB at max_len 512 (lengths 100-512, padded to
the longest in the batch), eager vs compiled, with and without FGM: real tokens per second, as the training log
reports them. Results are JSON records (moe_course.core.save_result: device, commit, wall time).
Needs torch, transformers, accelerate, tqdm and numpy only (not 🤗 datasets or fastcore).
"""
from __future__ import annotations
import argparse, dataclasses, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch


def config(smoke: bool, **kw):
    from moe_course.config import get_config
    small = dict(max_len=64, vocab_size=500, d_model=32, n_heads=2, d_ff=64, n_layers=2, num_experts=4, batch_size=8)
    return get_config("imdb-switch-gpu", progress=False, **(small if smoke else {}), **kw)


def batches(cfg, n: int, device, seed: int = 0) -> list[dict]:
    "Synthetic IMDB-like batches on `device`: lengths uniform in [max_len/5, max_len], padded to the batch's longest."
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lens = torch.randint(cfg.max_len // 5, cfg.max_len + 1, (cfg.batch_size,), generator=g)
        T = int(lens.max()); mask = torch.arange(T)[None] < lens[:, None]
        ids = torch.randint(5, cfg.vocab_size, (cfg.batch_size, T), generator=g).masked_fill(~mask, 0)
        out.append(dict(input_ids=ids.to(device), attention_mask=mask.to(device),
                        labels=torch.randint(0, 2, (cfg.batch_size,), generator=g).to(device)))
    return out


def setup(cfg, steps: int):
    from moe_course.imdb import build_model
    from moe_course.learner import make_accelerator
    from moe_course.optim import make_optimizer, make_scheduler
    import random, numpy as np
    random.seed(cfg.seed); np.random.seed(cfg.seed); torch.manual_seed(cfg.seed)   # (moe_course.data needs 🤗 datasets)
    acc = make_accelerator(cfg)
    model = build_model(cfg, cfg.vocab_size)
    opt = make_optimizer(model, cfg)
    model, opt = acc.prepare(model, opt)
    if cfg.compile: acc.unwrap_model(model).compile()
    return acc, model, opt, make_scheduler(opt, cfg, steps)


def sync_check(smoke: bool) -> dict:
    from moe_course.adversarial import FGMCallback
    from moe_course.learner import train_step
    dev = torch.device("cpu" if smoke else "cuda")
    cuda = dev.type == "cuda"
    rows = []
    for compiled, fgm_on in [(False, False), (True, False), (False, True)]:
        cfg = config(smoke, compile=compiled, fgm=fgm_on)
        acc, model, opt, sched = setup(cfg, 10)
        cbs = [FGMCallback(cfg.fgm_epsilon)] if fgm_on else []
        data = batches(cfg, 3, acc.device)
        t0 = time.perf_counter()
        for b in data[:2]: train_step(acc, model, b, opt, cfg, sched, cbs)   # warm-up: compilation, lazy state
        if cuda: torch.cuda.synchronize()
        warm = time.perf_counter() - t0
        row = dict(compiled=compiled, fgm=fgm_on, warmup_s=warm, synced=None, error=None)
        try:
            if cuda: torch.cuda.set_sync_debug_mode("error")
            train_step(acc, model, data[2], opt, cfg, sched, cbs)
            row["synced"] = False
        except RuntimeError as e:
            row.update(synced=True, error=str(e)[:2000])
        finally:
            if cuda: torch.cuda.set_sync_debug_mode("default"); torch.cuda.synchronize()
        if not cuda: row["note"] = "CPU smoke run: sync debug mode is CUDA-only; this only checks that the step runs"
        print(f"sync check: compiled={compiled} fgm={fgm_on}: " +
              ("no host sync" if row["synced"] is False else f"SYNC: {row['error'][:300]}"), flush=True)
        rows.append(row)
        del model, opt
    return dict(check="sync_debug_train_step", rows=rows, passed=all(r["synced"] is False for r in rows if not r["fgm"]))


def throughput(smoke: bool, steps: int) -> dict:
    from moe_course.adversarial import FGMCallback
    from moe_course.learner import train_one_epoch
    rows = []
    for compiled in (False, True):
        for fgm_on in (True, False):
            cfg = config(smoke, compile=compiled, fgm=fgm_on)
            acc, model, opt, sched = setup(cfg, steps)
            cbs = [FGMCallback(cfg.fgm_epsilon)] if fgm_on else []
            data = batches(cfg, steps, acc.device)
            t0 = time.perf_counter()
            train_one_epoch(acc, model, data[:5], opt, cfg, sched, cbs, log_every=10**9)   # warm-up (compiles shapes)
            warm = time.perf_counter() - t0
            tr = train_one_epoch(acc, model, data, opt, cfg, sched, cbs, log_every=10**9)
            row = dict(compiled=compiled, fgm=fgm_on, steps=steps, warmup_s=warm, tokens_per_s=tr["tokens_per_s"],
                       step_s=tr["train_time_s"] / steps, train_loss=tr["train_loss"])
            print(f"throughput: compiled={compiled} fgm={fgm_on}: {row['tokens_per_s']:,.0f} real tokens/s, "
                  f"{1e3 * row['step_s']:.1f} ms/step (warm-up {warm:.0f} s)", flush=True)
            rows.append(row)
            del model, opt
    return dict(check="imdb_switch_gpu_throughput", preset="imdb-switch-gpu", batch_size=cfg.batch_size,
                max_len=cfg.max_len, reference_tokens_per_s_h100=190607, rows=rows,
                note="synthetic IMDB-shaped batches (the model and optimiser of the preset); tokens/s counts real tokens")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("check", choices=["sync", "throughput"])
    p.add_argument("--out", default=None, help="JSON record to write (moe_course.core.save_result)")
    p.add_argument("--steps", type=int, default=100, help="throughput: timed steps per variant")
    p.add_argument("--cpu-smoke", action="store_true", help="a tiny model on the CPU: checks that the script runs")
    a = p.parse_args(argv)
    if not a.cpu_smoke and not torch.cuda.is_available(): raise SystemExit("no CUDA device: use --cpu-smoke on a CPU")
    t0 = time.perf_counter()
    res = sync_check(a.cpu_smoke) if a.check == "sync" else throughput(a.cpu_smoke, 5 if a.cpu_smoke else a.steps)
    res.update(cpu_smoke=a.cpu_smoke, command="python " + " ".join(sys.argv))
    if a.out:
        from moe_course.core import save_result
        print("wrote", save_result(a.out, res, time.perf_counter() - t0))
    return res


if __name__ == "__main__":
    main()
