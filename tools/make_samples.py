#!/usr/bin/env python3
"""Build the small class-balanced samples in `data/` from the full Parquet files.

    python tools/make_samples.py --src ../shared/data --dst data --seed 0

IMDB: 2,000 train / 1,000 test; Amazon polarity: 1,000 train / 500 test (half of each class, drawn with
`numpy.random.default_rng(seed)` and then shuffled); SST-2 and RTE: every split copied complete.
Rows, values and the Hugging Face schema metadata are kept; files are re-written with zstd. The script also
writes `data/README.md` (provenance, licences, row counts, sha256). Needs numpy and pyarrow only.
"""
from __future__ import annotations
import argparse, hashlib, os
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

# name -> {split: rows to keep (None = complete)}
PLAN = {"imdb": {"train": 2000, "test": 1000},
        "sst2": {"train": None, "validation": None, "test": None},
        "rte": {"train": None, "validation": None},
        "amazon_polarity": {"train": 1000, "test": 500}}

# where the full files in ../shared/data were taken from (see its README.md)
TAKEN_FROM = {"imdb": "GitHub `Digital-Defiance/IMBd-dataset` @ `ab4a42e1` (the original Stanford files)",
              "sst2": "GitHub `eyalbd2/Reproducing-AutoPrompt` @ `6288fb5b` (`glue_data/SST-2/`)",
              "rte": "GitHub `Ji-Yishan/MIEC-FYP` @ `25063570` (`RTE/*.parquet`, Hugging Face `glue/rte` exports)",
              "amazon_polarity": "GitHub `MarkTaylorTsai/machine_learning` @ `44f86263` (`train.ft.txt`)"}

SOURCES = {
    "imdb": ("Maas et al., *Learning Word Vectors for Sentiment Analysis*, ACL 2011 "
             "(aclImdb v1.0, https://ai.stanford.edu/~amaas/data/sentiment/); Hub id `stanfordnlp/imdb`.",
             "No formal licence upstream; research use, cite the ACL 2011 paper (HF card: \"other\"). "
             "Review texts are IMDb user content."),
    "sst2": ("Socher et al., *Recursive Deep Models for Semantic Compositionality Over a Sentiment Treebank*, "
             "EMNLP 2013, as used in GLUE (Wang et al., ICLR 2019); Hub id `nyu-mll/glue`, config `sst2`.",
             "No explicit licence for the data (HF glue card: \"unknown\"); cite Socher et al. 2013 and GLUE. "
             "Unlike the Hub, the `test` split here carries real labels (see the full data's README)."),
    "rte": ("PASCAL RTE 1, 2, 3 and 5 (Dagan et al. 2006; Bar-Haim et al. 2006; Giampiccolo et al. 2007; "
            "Bentivogli et al. 2009) as merged into GLUE; Hub id `nyu-mll/glue`, config `rte`.",
            "Licensing unclear / research only (GLUE card); cite the RTE papers and GLUE."),
    "amazon_polarity": ("Zhang, Zhao & LeCun, *Character-level Convolutional Networks for Text Classification*, "
                        "NeurIPS 2015, built from McAuley & Leskovec (RecSys 2013); Hub id `fancyzhx/amazon_polarity`.",
                        "Apache-2.0 per the HF card; texts are Amazon user content. **Caveat:** the full local copy "
                        "is itself a 6,274-row subset drawn from the upstream *test* split, so the train/test "
                        "separation is not the upstream one; never compare with published numbers."),
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""): h.update(chunk)
    return h.hexdigest()


def balanced_indices(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    "`n` row indices, `n // n_classes` from each class, drawn without replacement, in shuffled order."
    classes = np.unique(labels)
    per = n // len(classes)
    picked = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if len(idx) < per: raise ValueError(f"class {c} has only {len(idx)} rows, {per} requested")
        picked.append(rng.choice(idx, size=per, replace=False))
    return rng.permutation(np.concatenate(picked))


def build(src: Path, dst: Path, seed: int = 0) -> list[dict]:
    "Write every sample file under `dst`; return one row of facts per file."
    rows = []
    for name, splits in PLAN.items():
        for split, n in splits.items():
            fin = src / name / f"{split}.parquet"
            if not fin.exists(): raise FileNotFoundError(f"{fin} is missing: point --src at a folder laid out like /work/shared/data")
            table = pq.read_table(fin)
            if n is not None:
                # a fresh generator per (name, split) so adding a dataset never changes another one's sample
                rng = np.random.default_rng([seed, sum(map(ord, name + split))])
                table = table.take(balanced_indices(table.column("label").to_numpy(), n, rng))
            out = dst / name / f"{split}.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, out, compression="zstd", compression_level=19)
            counts = pc.value_counts(table.column("label")).to_pylist()
            counts = {d["values"]: d["counts"] for d in counts}
            rows.append(dict(file=f"{name}/{split}.parquet", rows=table.num_rows, of=pq.read_metadata(fin).num_rows,
                             neg=counts.get(0, 0), pos=counts.get(1, 0), bytes=out.stat().st_size, sha256=sha256(out),
                             src_sha256=sha256(fin)))
            print(f"{rows[-1]['file']:32s} {table.num_rows:6d} rows {rows[-1]['bytes']:>10,d} bytes")
    return rows


def write_readme(dst: Path, rows: list[dict], seed: int) -> Path:
    total = sum(r["bytes"] for r in rows)
    lines = ["# Bundled data samples", "",
             "Small copies of the four text datasets so every notebook and test runs offline on a CPU in seconds.",
             "**Results on these samples are not comparable with published numbers** (or with the full data):",
             "`moe_course.data.load_text_dataset` logs a warning whenever it falls back to them.", "",
             f"Made by `python tools/make_samples.py --src ../shared/data --dst data --seed {seed}` from the full",
             "Parquet files (the folder described by `../shared/data/README.md`, which documents where each full",
             "file was taken from and how it was converted). IMDB and Amazon polarity are class-balanced random",
             "samples (half of each class, `numpy.random.default_rng`, then shuffled); SST-2 and RTE are complete",
             "copies. Columns, values and the Hugging Face schema metadata (`ClassLabel` names) are unchanged;",
             "files are re-compressed with zstd (level 19). IMDB keeps the extra `rating` and `id` columns of the",
             "full files; the loader drops them so the schema matches the Hub.", "",
             "| file | rows | of (full) | label 0 | label 1 | bytes | sha256 |", "|---|---:|---:|---:|---:|---:|---|"]
    lines += [f"| `{r['file']}` | {r['rows']:,} | {r['of']:,} | {r['neg']:,} | {r['pos']:,} | {r['bytes']:,} | `{r['sha256']}` |"
              for r in rows]
    lines += ["", f"Total: {total:,} bytes ({total / 2**20:.2f} MiB).", "",
              "Source files (in `../shared/data`, sha256 as listed in its `MANIFEST.sha256`):", "",
              "| sample | made from | source sha256 |", "|---|---|---|"]
    lines += [f"| `{r['file']}` | `{r['file']}` ({r['of']:,} rows) | `{r['src_sha256']}` |" for r in rows]
    lines += ["", "## Provenance and licences", ""]
    for name, (up, lic) in SOURCES.items():
        lines += [f"- **{name}**: {up}", f"  Full file taken from: {TAKEN_FROM[name]}.", f"  Licence: {lic}"]
    lines += ["", "Check the files with `sha256sum` against the table above; rebuild them with the command above",
              "(the output is deterministic for a given seed and pyarrow version).", ""]
    p = dst / "README.md"
    p.write_text("\n".join(lines))
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=os.environ.get("MOE_COURSE_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")),
                    help="folder with <name>/<split>.parquet (default: env MOE_COURSE_DATA or ../shared/data)")
    ap.add_argument("--dst", default=str(Path(__file__).resolve().parents[1] / "data"))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    src, dst = Path(a.src), Path(a.dst)
    rows = build(src, dst, a.seed)
    print("wrote", write_readme(dst, rows, a.seed), f"({sum(r['bytes'] for r in rows) / 2**20:.2f} MiB of Parquet)")


if __name__ == "__main__": main()
