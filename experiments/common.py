"""Shared by the experiment scripts: the repo root on `sys.path`, and where the full data lives."""
from __future__ import annotations
import os, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))


def find_data_dir(arg: str | None, probe: str = "imdb/train.parquet") -> str | None:
    "--data-dir, else $MOE_COURSE_DATA, else a shared/data folder inside or beside the repo (holding `probe`)."
    if arg: return arg
    if os.environ.get("MOE_COURSE_DATA"): return os.environ["MOE_COURSE_DATA"]
    for p in (ROOT / "shared" / "data", ROOT.parent / "shared" / "data"):
        if (p / probe).exists(): return str(p)
    return None
