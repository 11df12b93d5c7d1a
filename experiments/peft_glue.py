"""LoRA and BitFit fine-tuning on GLUE SST-2 and RTE with the 🤗 Trainer (moe_course.finetune).

Examples:
  python experiments/peft_glue.py --model /path/to/all-MiniLM-L6-v2 --data-dir ../shared/data --epochs 3 --sweep
  python experiments/peft_glue.py --quick          # CPU smoke run, tiny random RoBERTa, writes /tmp/peft_glue_quick.json

Writes results/peft_glue.json (override with --out) with one record per run: accuracy, F1, trainable parameters,
steps, wall time. The file is rewritten after every run, so a crash or time-out keeps the finished runs.
"""
from __future__ import annotations
import argparse, os, sys, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=os.environ.get("MOE_COURSE_MODEL", "roberta-base"),
                   help="Hub name or local folder (default: env MOE_COURSE_MODEL, else roberta-base)")
    p.add_argument("--data-dir", default=os.environ.get("MOE_COURSE_DATA"),
                   help="folder with <task>/<split>.parquet (default: env MOE_COURSE_DATA, else the bundled samples)")
    p.add_argument("--tasks", nargs="+", default=["sst2", "rte"], choices=["sst2", "rte"])
    p.add_argument("--methods", nargs="+", default=["lora", "bitfit"], choices=["lora", "bitfit", "full"])
    p.add_argument("--r", type=int, default=2, help="LoRA rank of the main runs")
    p.add_argument("--lora-alpha", type=float, default=8)
    p.add_argument("--sweep", action="store_true", help="also LoRA at each --ranks on SST-2")
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--max-steps", type=int, default=None, help="optimizer updates per run (overrides --epochs)")
    p.add_argument("--lr", type=float, default=None, help="default: 5e-4 for LoRA/BitFit, 2e-5 for full")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="total training-time budget; each run gets an equal share of what is left")
    p.add_argument("--out", default=None, help="default results/peft_glue.json (--quick: /tmp/peft_glue_quick.json)")
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke run on the bundled samples (< 1 min)")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.model, a.data_dir, a.max_steps, a.max_train_samples, a.max_eval_samples = "tiny-roberta", None, 6, 128, 64
        a.grad_accum, a.warmup_steps, a.ranks = 1, 2, [1, 4]
        a.out = a.out or "/tmp/peft_glue_quick.json"
    a.out = a.out or str(ROOT / "results" / "peft_glue.json")
    return a


def plan(a) -> list[tuple[str, str, int]]:
    "(task, method, r) for every run: the main grid first, then the rank sweep on SST-2."
    runs = [(t, m, a.r) for t in a.tasks for m in a.methods]
    if a.sweep: runs += [("sst2", "lora", r) for r in a.ranks if ("sst2", "lora", r) not in runs]
    return runs


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.model == "tiny-roberta" or Path(a.model).exists():  # a local model: never try the Hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch
    if a.quick: torch.set_num_threads(1)
    from moe_course.core import save_result
    from moe_course.finetune import finetune, REFERENCE, PUBLISHED

    runs, records, failed, t0 = plan(a), [], 0, time.perf_counter()
    config = {k: v for k, v in vars(a).items()}
    print(f"{len(runs)} runs of {a.model} on {'CUDA' if torch.cuda.is_available() else 'CPU'} -> {a.out}", flush=True)
    for i, (task, method, r) in enumerate(runs):
        budget = None
        if a.time_budget_s is not None:
            left = a.time_budget_s - (time.perf_counter() - t0)
            if left <= 0: print(f"time budget spent: skipping {len(runs) - i} run(s)"); break
            budget = left / (len(runs) - i)
        print(f"[{i + 1}/{len(runs)}] {task} {method}" + (f" r={r}" if method == "lora" else ""), flush=True)
        try:
            rec = finetune(a.model, task, method, r=r, lora_alpha=a.lora_alpha, lr=a.lr, batch_size=a.batch_size,
                           grad_accum=a.grad_accum, warmup_steps=a.warmup_steps, epochs=a.epochs,
                           max_steps=a.max_steps, max_length=a.max_length, max_train_samples=a.max_train_samples,
                           max_eval_samples=a.max_eval_samples, data_dir=a.data_dir, sample=a.quick,
                           seed=a.seed, time_budget_s=budget, verbose=a.verbose)
            rec["sweep"] = (task, method) == ("sst2", "lora") and r != a.r
            print(f"   accuracy {rec['accuracy']:.4f}  f1 {rec['f1']:.4f}  trainable {rec['trainable']['trainable']:,} "
                  f"({rec['trainable']['percent']:.3f}%)  {rec['steps']} steps  {rec['wall_time_s']:.0f}s", flush=True)
        except Exception as e:  # keep going: one failed run should not lose the others
            failed += 1; traceback.print_exc()
            rec = dict(task=task, method=method, r=r, model=a.model, error=f"{type(e).__name__}: {e}")
        records.append(rec)
        save_result(a.out, dict(config=config, runs=records,
                                reference={f"{t}/{m}": v for (t, m), v in REFERENCE.items()},
                                published={f"{t}/{m}": v for (t, m), v in PUBLISHED.items()},
                                failed=failed, complete=i + 1 == len(runs)),
                    wall_time_s=time.perf_counter() - t0)
    print(f"wrote {a.out} ({len(records)} runs, {failed} failed) in {time.perf_counter() - t0:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
