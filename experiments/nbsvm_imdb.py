"""NBSVM (Wang & Manning 2012; uni+bigram NB log-count ratios + logistic regression) on the full IMDB data: the
reference line of chapter 18_pretrain. CPU, about a minute.

    python experiments/nbsvm_imdb.py                      # -> results/nbsvm_imdb.json (25,000 official test reviews)
    python experiments/nbsvm_imdb.py --sample --out /tmp/nbsvm.json    # smoke test on the bundled sample
"""
from __future__ import annotations
import argparse, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, find_data_dir  # experiments/common.py


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="folder with imdb/{train,test}.parquet (default $MOE_COURSE_DATA)")
    ap.add_argument("--out", default=None, help="record (default results/nbsvm_imdb.json)")
    ap.add_argument("--C", type=float, default=1.0); ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", action="store_true", help="the bundled sample instead of the full data")
    a = ap.parse_args(argv)
    from moe_course.core import save_result
    from moe_course.data import as_texts, load_text_dataset
    from moe_course.pretrain import NBSVM
    t0 = time.perf_counter()
    if a.sample: dsd = load_text_dataset("imdb", source="sample")
    else:
        d = find_data_dir(a.data_dir)
        if d is None: raise SystemExit("No IMDB data found: pass --data-dir or set MOE_COURSE_DATA (or use --sample)")
        dsd = load_text_dataset("imdb", source="local", data_dir=d)
    out = Path(a.out or ROOT / "results" / "nbsvm_imdb.json")
    nb = NBSVM(C=a.C, alpha=a.alpha, seed=a.seed).fit(as_texts(dsd["train"], "imdb"), dsd["train"]["label"])
    fit_s = time.perf_counter() - t0
    test = nb.evaluate(as_texts(dsd["test"], "imdb"), dsd["test"]["label"])
    save_result(out, dict(experiment="nbsvm_imdb", model="NBSVM uni+bigrams, logistic regression (liblinear)",
                          settings=dict(C=a.C, alpha=a.alpha, ngram_range=[1, 2], seed=a.seed), test=test,
                          features=len(nb.r), sizes=dict(train=len(dsd["train"]), test=len(dsd["test"])),
                          fit_time_s=fit_s, paper_accuracy=0.9122, sample=a.sample),
                wall_time_s=time.perf_counter() - t0)
    print(f"NBSVM: test accuracy {test['accuracy']:.4f} (paper 0.9122), {len(nb.r):,} features, "
          f"{time.perf_counter() - t0:.0f} s -> {out}")


if __name__ == "__main__":
    main()
