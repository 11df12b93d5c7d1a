"""The Switch scaling curve in miniature on IMDB *train* reviews (chapter 19_experts_pay): byte-level causal LMs
with N in {1, 2, 4, 8, 16, 32} top-1 experts at equal active FLOPs, a dense model with the total parameters of
N=8, extra seeds for N=1 and the best N, and sparse upcycling of a dense checkpoint.

    python experiments/experts_pay.py --preset tiny      # seconds, on the bundled sample (-> $TMPDIR)
    nice -n 5 python experiments/experts_pay.py --preset cpu    # full train split, the 2-core CPU (<= 60 min)
    # or the grid and the rest side by side (two processes, two records):
    nice -n 5 python experiments/experts_pay.py --preset cpu --phases grid
    nice -n 5 python experiments/experts_pay.py --preset cpu --phases seeds upcycle --seeds-n 8 --out results/experts_pay_cpu_extra.json
    python experiments/experts_pay.py --preset gpu       # prepared for one GPU (never run here)

Models are trained round-robin, `chunk` steps each in turn, so that the load of a shared machine hits every
model alike; each model's wall seconds are its own chunks only. Validation = held-out *train* reviews (the test
split is never read into the corpus). The record results/experts_pay_<preset>.json is rewritten after every round
(device, commit, wall time, load average), so a stopped run leaves its partial curves.
"""
from __future__ import annotations
import argparse, os, statistics, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, find_data_dir  # experiments/common.py

PRESETS = {
    "tiny": dict(model=dict(max_len=32, d_model=32, n_heads=2, d_ff=32, n_layers=1), experts=[1, 2, 4], steps=20,
                 chunk=10, batch_size=8, seq_len=32, valid_batches=2, lr=3e-3, seeds=[1], wide_of=2, upcycle=4),
    "cpu": dict(model=dict(max_len=128, d_model=64, n_heads=4, d_ff=128, n_layers=2), experts=[1, 2, 4, 8, 16, 32],
                steps=600, chunk=100, batch_size=32, seq_len=128, valid_batches=8, lr=3e-3, seeds=[1, 2], wide_of=8,
                upcycle=8, threads=1),
    "gpu": dict(model=dict(max_len=256, d_model=512, n_heads=8, d_ff=2048, n_layers=6), experts=[1, 2, 4, 8, 16, 32],
                steps=20000, chunk=1000, batch_size=64, seq_len=256, valid_batches=32, lr=6e-4, seeds=[1, 2], wide_of=8,
                upcycle=8),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--data-dir", default=None, help="folder with imdb/train.parquet (default $MOE_COURSE_DATA)")
    ap.add_argument("--out", default=None, help="record (default results/experts_pay_<preset>.json; tiny: $TMPDIR)")
    ap.add_argument("--run-dir", default=None, help="where backbones are saved (default runs/experts_pay_<preset>)")
    ap.add_argument("--steps", type=int, default=None); ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--phases", nargs="+", default=["grid", "seeds", "upcycle"], choices=["grid", "seeds", "upcycle"])
    ap.add_argument("--seeds-n", type=int, default=8, help="MoE size of the extra seeds when the grid is not in --phases")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (cpu preset: 1)")
    a = ap.parse_args(argv)
    import torch
    from moe_course.core import device_info, save_result
    from moe_course.data import load_text_dataset
    from moe_course.experts_pay import (CausalLM, LMRun, byte_corpus, expert_bytes, steps_to_reach, top_bytes,
                                        train_round_robin, upcycle_lm, valid_windows)
    from moe_course.pretrain import save_encoder
    from moe_course.transformer import count_parameters
    t_start, p = time.perf_counter(), dict(PRESETS[a.preset])
    # one thread on a shared CPU: with more threads than free cores, OpenMP's waiting threads spin (30x slower here)
    if a.threads or p.get("threads"): torch.set_num_threads(a.threads or p["threads"])
    if a.steps: p["steps"] = a.steps
    tiny, dev = a.preset == "tiny", "cuda" if torch.cuda.is_available() else "cpu"
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "moe_course_experts_pay"
    out = Path(a.out or (tmp if tiny else ROOT / "results") / f"experts_pay_{a.preset}.json")
    run_dir = Path(a.run_dir or (tmp if tiny else ROOT / "runs") / f"experts_pay_{a.preset}")
    if tiny: dsd = load_text_dataset("imdb", source="sample")
    else:
        d = find_data_dir(a.data_dir)
        if d is None: raise SystemExit("No IMDB data found: pass --data-dir or set MOE_COURSE_DATA")
        dsd = load_text_dataset("imdb", source="local", data_dir=d)
    corpus = byte_corpus(dsd, seed=a.seed)
    data, valid = corpus["train"].to(dev), [b.to(dev) for b in valid_windows(corpus["valid"], p["valid_batches"], p["batch_size"], p["seq_len"])]
    B, T, S, chunk = p["batch_size"], p["seq_len"], p["steps"], p["chunk"]
    print(f"{device_info()['device']}: {corpus['train_reviews']} train reviews ({len(corpus['train']):,} bytes), "
          f"{corpus['valid_reviews']} held-out train reviews for validation", flush=True)
    rec = dict(experiment="experts_pay", preset=a.preset, seed=a.seed, settings=p, threads=torch.get_num_threads(),
               corpus={k: corpus[k] for k in ("train_reviews", "valid_reviews")} | dict(train_bytes=len(corpus["train"]),
               valid_bytes=len(corpus["valid"]), test_reviews_read=0), runs={}, loadavg=[], sample=tiny)
    save = lambda: save_result(out, rec, wall_time_s=time.perf_counter() - t_start)

    def build(n, seed, d_ff=None):
        torch.manual_seed(seed)
        return CausalLM(257, **(p["model"] | dict(num_experts=n, d_ff=d_ff or p["model"]["d_ff"], dropout=0.0))).to(dev)

    def go(runs, meta):
        def on_chunk():
            rec["loadavg"].append(dict(t=round(time.perf_counter() - t_start, 1), load1=os.getloadavg()[0]))
            for k, r in runs.items():
                sps = [(h["seconds"] - (r.history[i - 1]["seconds"] if i else 0)) / (h["step"] - (r.history[i - 1]["step"] if i else 0))
                       for i, h in enumerate(r.history)]
                rec["runs"][k] = meta[k] | dict(history=r.history, steps_done=r.step, seconds=r.seconds,
                                                 sec_per_step_median=statistics.median(sps) if sps else None)
            save()
            last = {k: round(r.history[-1]["valid_loss"], 3) for k, r in runs.items() if r.history}
            print(f"[{time.perf_counter() - t_start:6.0f}s load {os.getloadavg()[0]:.1f}] " + " ".join(f"{k}:{v}" for k, v in last.items()), flush=True)
        return train_round_robin(runs, data, valid, chunk, B, T, on_chunk)

    def new(name, n, seed, d_ff=None, steps=S, model=None):
        m = model if model is not None else build(n, seed, d_ff)
        meta = dict(num_experts=n, seed=seed, d_ff=d_ff or p["model"]["d_ff"], **count_parameters(m))
        return LMRun(m, steps, lr=p["lr"], seed=seed), meta

    grid = {}
    if "grid" in a.phases:
        metas = {}
        for n in p["experts"]: grid[f"N={n}"], metas[f"N={n}"] = new(f"N={n}", n, a.seed)
        wide = p["wide_of"] * p["model"]["d_ff"]
        grid[f"dense d_ff={wide}"], metas[f"dense d_ff={wide}"] = new("wide", 1, a.seed, d_ff=wide)
        go(grid, metas)
        dense_final = grid["N=1"].history[-1]["valid_loss"]
        moe = {k: r for k, r in grid.items() if k.startswith("N=") and k != "N=1"}
        best = min(moe, key=lambda k: moe[k].history[-1]["valid_loss"])
        rec["best"] = best
        rec["speedup"] = {k: dict(steps=steps_to_reach(r.history, dense_final), seconds=steps_to_reach(r.history, dense_final, "seconds"))
                          for k, r in grid.items()}
        specs = {}
        for k in ("N=8", best):
            if k in grid:
                specs[k] = {f"layer {l}": expert_bytes(grid[k].model.cpu(), [v.cpu() for v in valid], l).tolist()
                            for l in range(len(grid[k].model.blocks))}
                rec.setdefault("top_bytes", {})[k] = {l: top_bytes(torch.tensor(c)) for l, c in specs[k].items()}
                grid[k].model.to(dev)
        rec["expert_bytes"] = specs
        for k in ("N=1", best): save_encoder(grid[k].model.cpu(), run_dir / k.replace("=", ""))
        save()
        print(f"best {best}; dense final {dense_final:.4f}; speedup {rec['speedup']}", flush=True)
    if "seeds" in a.phases:
        n_best = int(rec["best"][2:]) if grid else a.seeds_n; runs, metas = {}, {}
        rec["seeds_of"] = [1, n_best]
        for s in p["seeds"]:
            for n in (1, n_best): runs[f"N={n} seed={s}"], metas[f"N={n} seed={s}"] = new("", n, s)
        go(runs, metas)
        for k, r in runs.items(): save_encoder(r.model.cpu(), run_dir / k.replace("=", "").replace(" ", "_"))
    if "upcycle" in a.phases:
        N = p["upcycle"]
        dense, md = new("", 1, a.seed, steps=S // 2)
        go({"upcycle source: dense S/2": dense}, {"upcycle source: dense S/2": md})
        up, mu = new("", N, a.seed, steps=S - S // 2, model=upcycle_lm(dense.model, N, seed=a.seed))
        go({f"upcycled N={N} (S/2 dense + S/2)": up}, {f"upcycled N={N} (S/2 dense + S/2)": mu | dict(start_step=S // 2)})
        rec["upcycling"] = dict(total_steps=S, dense_steps=S // 2, upcycled_valid=up.history[-1]["valid_loss"],
                                scratch_valid=grid[f"N={N}"].history[-1]["valid_loss"] if grid else None,
                                dense_valid=grid["N=1"].history[-1]["valid_loss"] if grid else None)
        print(f"upcycling: {rec['upcycling']}", flush=True)
    save()
    print(f"total {time.perf_counter() - t_start:.0f} s -> {out}")


if __name__ == "__main__":
    main()
