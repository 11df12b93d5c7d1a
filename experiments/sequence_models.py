"""Eight sequence-model settings (LSTMs, Transformers, BERT fine-tuning) on Amazon polarity and IMDB, plus robustness.

Examples:
  python experiments/sequence_models.py --data-dir ../shared/data --model ../shared/models/all-MiniLM-L6-v2
  python experiments/sequence_models.py --datasets imdb --time-budget-s 300
  python experiments/sequence_models.py --quick        # CPU smoke run on the bundled samples, writes /tmp/moe_course_seq/

For each dataset it trains settings 1-8 of moe_course.seqmodels (and the 4-expert Switch model), measures train and
eval time, best validation accuracy, F1, losses, parameters and peak memory, and writes
results/sequence_models_amazon.json and results/sequence_models_imdb.json. It then measures accuracy of settings 1, 4,
7 and the Switch model under every perturbation of moe_course.perturb over the whole test split and writes
results/robustness.json. Each file is rewritten as soon as its part is done, so a time-out keeps finished parts.

Defaults (sized for one ~8-minute command on an H100, bf16): max_len 256, width 128, batch 128 (BERT 32), 8 epochs
on the small Amazon subset and 4 on IMDB (BERT: 3 and 2), whole-run --time-budget-s 380: once spent, no new setting,
perturbation or dataset starts (a running one finishes), and what was skipped is recorded as status "skipped".
Settings run in the order 1-7, switch, 8. Each dataset is tokenised once (WordPiece for 1-7/switch, the model's
tokenizer for 8); the test split is perturbed by a process pool while the GPU trains.

Note on Amazon: the offline copy (../shared/data/amazon_polarity) is a small real subset, 5,274 train / 1,000 test
reviews, both drawn from the upstream *test* split; its accuracies are not comparable with published numbers.
"""
from __future__ import annotations
import argparse, os, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when imported, not run, e.g. by tests
from common import ROOT, find_data_dir  # experiments/common.py

SHORT = {"amazon_polarity": "amazon", "imdb": "imdb"}
EPOCHS, BERT_EPOCHS = {"amazon_polarity": 8, "imdb": 4}, {"amazon_polarity": 3, "imdb": 2}
AMAZON_NOTE = ("offline amazon_polarity is a small real subset (5,274 train / 1,000 test) drawn from the upstream "
               "test split; not comparable with published amazon_polarity results")


def _first_existing(*paths):
    for p in paths:
        if p and Path(p).exists(): return str(p)
    return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=find_data_dir(None, probe="."),
        help="folder with <name>/<split>.parquet (default: env MOE_COURSE_DATA, else ./shared/data or ../shared/data)")
    p.add_argument("--model", default=os.environ.get("MOE_COURSE_MODEL") or _first_existing(
        ROOT / "shared" / "models" / "all-MiniLM-L6-v2", ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2"),
        help="setting 8: Hub name or local folder (default: env MOE_COURSE_MODEL, a local all-MiniLM-L6-v2, "
             "else bert-base-uncased from the Hub)")
    p.add_argument("--datasets", nargs="+", default=["amazon_polarity", "imdb"],
                   help="amazon_polarity (or amazon) and/or imdb")
    p.add_argument("--settings", nargs="+", default=["1", "2", "3", "4", "5", "6", "7", "switch", "8"],
                   help="settings to train, in this order: 1-8 and/or switch (BERT last: the most expensive)")
    p.add_argument("--robust-settings", nargs="+", default=["1", "4", "7", "switch"],
                   help="settings evaluated under perturbation (must also be trained)")
    p.add_argument("--no-robustness", action="store_true")
    p.add_argument("--pct", type=float, default=0.1, help="fraction of sites each perturbation changes")
    p.add_argument("--perturb-workers", type=int, default=None,
                   help="processes perturbing the test split while training (default: CPUs - 2, at most 9; 0 = off)")
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=128, help="batch size of settings 1-7 and switch")
    p.add_argument("--bert-batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of settings 1-7 and switch (default: 8 on the small Amazon subset, 4 on IMDB)")
    p.add_argument("--bert-epochs", type=int, default=None, help="epochs of setting 8 (default: 3 on Amazon, 2 on IMDB)")
    p.add_argument("--d-model", type=int, default=128, help="LSTM hidden size / Transformer width")
    p.add_argument("--d-ff", type=int, default=256)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=20000)
    p.add_argument("--max-train-samples", type=int, default=None, help="use only the first N (shuffled) training rows")
    p.add_argument("--max-test-samples", type=int, default=None, help="use only the first N (shuffled) test rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget-s", type=float, default=380,
                   help="whole-run budget: no new setting or perturbation starts once it is spent (0 = none)")
    p.add_argument("--out-dir", default=None, help="default results/ (--quick: /tmp/moe_course_seq)")
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke run on the bundled samples (< 2 min)")
    a = p.parse_args(argv)
    a.datasets = [{"amazon": "amazon_polarity"}.get(d, d) for d in a.datasets]
    for d in a.datasets:
        if d not in SHORT: p.error(f"unknown dataset {d!r}: choose amazon_polarity and/or imdb")
    conv = lambda s: s if s == "switch" else int(s)
    try: a.settings, a.robust_settings = [conv(s) for s in a.settings], [conv(s) for s in a.robust_settings]
    except ValueError: p.error("settings are 1-8 or 'switch'")
    if a.quick:
        a.max_len, a.batch_size, a.bert_batch_size, a.epochs, a.bert_epochs = 48, 32, 32, 1, 1
        a.d_model, a.d_ff, a.n_heads, a.vocab_size, a.model, a.data_dir = 16, 32, 2, 1500, "tiny", None
        a.max_train_samples, a.max_test_samples = a.max_train_samples or 400, a.max_test_samples or 200
    a.out_dir = Path(a.out_dir or ("/tmp/moe_course_seq" if a.quick else ROOT / "results"))
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.model == "tiny" or (a.model and Path(a.model).exists()):  # a local model: never wait for the Hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.data_dir: os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch
    if a.quick: torch.set_num_threads(1)
    if torch.cuda.is_available(): torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
    from moe_course.core import save_result, device_info
    from moe_course.data import load_text_dataset, as_texts, eval_split
    from moe_course.seqmodels import run_suite, get_setting, results_table
    from moe_course.perturb import perturb_dataset, PERTURBATIONS
    from moe_course.robustness import robustness_suite

    from moe_course.data import hub_reachable
    if not a.quick and not a.data_dir and not hub_reachable():
        print("error: no --data-dir (env MOE_COURSE_DATA, ./shared/data, ../shared/data) and the Hub is unreachable; "
              "refusing to write results/ from the bundled samples (use --quick for a smoke run)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    budget = a.time_budget_s if a.time_budget_s and a.time_budget_s > 0 else None
    left = lambda: float("inf") if budget is None else budget - (time.perf_counter() - t0)
    args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}
    print(f"{device_info()['device']}: datasets {a.datasets}, settings {a.settings}, budget {budget}s -> {a.out_dir}",
          flush=True)
    robust = dict(pct=a.pct, seed=a.seed, perturbations=list(PERTURBATIONS), args=args, datasets={}, test_rows={})
    keep = tuple(k for k in a.robust_settings if k in a.settings) if not a.no_robustness else ()
    pool, workers = None, a.perturb_workers if a.perturb_workers is not None else min(len(PERTURBATIONS), (os.cpu_count() or 1) - 2)
    if keep and workers > 0:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    for name in a.datasets:
        if left() <= 0: print(f"time budget spent: skipping {name}", flush=True); continue
        td = time.perf_counter()
        dsd = load_text_dataset(name, data_dir=a.data_dir, sample=a.quick)
        for split, n in (("train", a.max_train_samples), (eval_split(name), a.max_test_samples)):
            if n is not None and n < len(dsd[split]): dsd[split] = dsd[split].shuffle(seed=a.seed).select(range(n))
        sizes = {k: len(v) for k, v in dsd.items()}
        print(f"== {name}: {sizes}", flush=True)
        test_texts, test_labels = as_texts(dsd[eval_split(name)], name), dsd[eval_split(name)]["label"]
        futures = {}
        if keep and pool is not None:  # perturb the whole test split in other processes while the GPU trains
            futures = {p: pool.submit(perturb_dataset, test_texts, p, a.seed, a.pct, None, 1) for p in PERTURBATIONS}
        # keep ~1/3 of what is left for the robustness pass of this dataset and the datasets after it
        n_after = len(a.datasets) - a.datasets.index(name) - 1
        share = left() / (1 + n_after) if budget is not None else None
        suite = run_suite(dsd, name, settings=a.settings, bert="tiny" if a.model == "tiny" else a.model,
                          max_len=a.max_len, batch_size=a.batch_size, bert_batch_size=a.bert_batch_size,
                          vocab_size=a.vocab_size, d_model=a.d_model, d_ff=a.d_ff, n_heads=a.n_heads,
                          epochs=a.epochs or EPOCHS[name], bert_epochs=a.bert_epochs or BERT_EPOCHS[name], seed=a.seed, keep=keep,
                          time_budget_s=None if share is None else share * (0.7 if keep else 1.0),
                          log=lambda s: print(s, flush=True))
        rows = suite["rows"]
        payload = dict(dataset=name, splits=sizes, quick=a.quick, args=args, rows=rows,
                       note=AMAZON_NOTE if name == "amazon_polarity" else "full IMDB 25k/25k (valid: 10% of train)")
        path = save_result(a.out_dir / f"sequence_models_{SHORT[name]}.json", payload, time.perf_counter() - td)
        print(results_table(rows).to_string(), flush=True)
        print(f"wrote {path}", flush=True)
        if keep and suite["models"]:
            tr = time.perf_counter()
            models = {get_setting(k)["label"]: suite["models"][k] for k in keep if k in suite["models"]}
            rb = max(0.0, left() - n_after * 60) if budget is not None else None
            rrows = robustness_suite(models, test_texts, test_labels, pct=a.pct, seed=a.seed, max_len=a.max_len,
                                     batch_size=256, time_budget_s=rb, perturbed=futures)
            robust["datasets"][name] = rrows
            robust["test_rows"][name] = len(test_texts)
            robust.setdefault("seconds", {})[name] = time.perf_counter() - tr
            path = save_result(a.out_dir / "robustness.json", robust, time.perf_counter() - t0)
            import pandas as pd
            print(pd.DataFrame(rrows).pivot(index="perturbation", columns="model", values="accuracy").round(4).to_string())
            print(f"wrote {path} ({time.perf_counter() - tr:.0f}s)", flush=True)
        del suite
        if torch.cuda.is_available(): torch.cuda.empty_cache()
    if pool is not None: pool.shutdown(wait=False, cancel_futures=True)
    print(f"done in {time.perf_counter() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
