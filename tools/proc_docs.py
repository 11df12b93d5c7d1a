#!/usr/bin/env python
"""Run nbdev's docs processing (the step of `nbdev_docs` before Quarto) over the notebooks; fail if one breaks.

`nbdev_proc_nbs` would first try to download Quarto and write into `_proc/`; this script runs the same processing,
`nbdev.serve_drv.main` with nbdev's `FilterDefaults`, one fresh process per notebook as `nbdev.serve.proc_nbs` does,
from the repository root, but writes into a temporary folder that is removed afterwards. While processing, nbdev executes every cell that begins
with an import (and the `show_doc` cells), so such a cell must not use variables from other cells.

    python tools/proc_docs.py                 # every notebook in nbs/
    python tools/proc_docs.py nbs/12_adversarial.ipynb --keep _proc_check
"""
from __future__ import annotations
import argparse, os, shutil, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from run_notebooks import ENV, notebooks, rel  # noqa: E402


def _proc_one(src, dst):
    "Process one notebook in this process, exactly as a worker of `nbdev.serve.proc_nbs` does."
    import nbdev.serve_drv
    from nbdev.processors import FilterDefaults
    nbdev.serve_drv.main((Path(src), Path(dst), FilterDefaults))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", help="notebooks or folders (default: nbs/)")
    ap.add_argument("--n_workers", type=int, default=2)
    ap.add_argument("--keep", default=None, help="write the processed notebooks here instead of a temporary folder")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: process one notebook (src, dst) here
    a = ap.parse_args(argv)
    if a.one: _proc_one(*a.one); return 0
    nbs, t0 = notebooks(a.paths), time.perf_counter()
    os.environ.update(ENV); os.chdir(ROOT)   # nbdev_docs runs from the repository root
    out = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="moe_course_proc_"))
    try:
        jobs = []
        for p in nbs:
            d = out / (p.relative_to(ROOT / "nbs") if p.is_relative_to(ROOT / "nbs") else p.name)
            d.parent.mkdir(parents=True, exist_ok=True); jobs.append((str(p), str(d)))
        def run(job):
            s = time.perf_counter()
            r = subprocess.run([sys.executable, __file__, "--one", *job], cwd=ROOT, capture_output=True, text=True,
                               env={**os.environ, **ENV})
            print(f"{'ok  ' if r.returncode == 0 else 'FAIL'} {time.perf_counter() - s:6.1f} s  {rel(Path(job[0]))}",
                  flush=True)
            return r.stderr[-6000:] if r.returncode else None
        with ThreadPoolExecutor(max(1, a.n_workers)) as ex: errs = list(ex.map(run, jobs))
    finally:
        if not a.keep: shutil.rmtree(out, ignore_errors=True)
    bad = [(p, e) for p, e in zip(nbs, errs) if e]
    for p, e in bad: print(f"nbdev docs processing failed on {rel(p)}:\n{e}", file=sys.stderr)
    print(f"docs processing: {len(nbs) - len(bad)} of {len(nbs)} notebooks ok ({time.perf_counter() - t0:.0f} s)")
    return 1 if bad else 0


if __name__ == "__main__": sys.exit(main())
