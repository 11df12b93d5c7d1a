#!/usr/bin/env python
"""Give every chapter an "Open in Colab" badge and a first code cell that installs the course where `moe_course` is
not importable (Colab, a fresh machine); idempotent, so rerun it after adding or renaming chapters.

    python tools/colab.py            # add or refresh the badge and the install cell in nbs/[0-9][0-9]_*.ipynb
    python tools/colab.py --check    # exit 1 (and name them) if a chapter lacks them or holds a stale copy

The badge URL comes from settings.ini (`git_url`, `branch`, `nbs_path`). The badge is a markdown cell right after the
title cell; the install cell follows it. It is a no-op where `moe_course` imports (here and in CI); elsewhere it
clones the repository (the bundled samples live in its `data/` folder, which a plain `pip install git+...` would not
bring), installs it in editable mode, puts it on `sys.path` (an editable install is seen only by new kernels), points
`MOE_COURSE_SAMPLES` at its `data/` and moves into its `nbs/` folder, so the chapters' relative paths (`../results`,
`../data`) work as they do here. The notebooks' kernelspec is set to the one `make install` registers (`python3`,
display name `python3`: nbdev_clean writes the kernel's name as its display name, and JupyterLab would otherwise
rewrite it on the first save). Exercise solution cells (first line `# solution`) are marked collapsed for JupyterLab.
"""
from __future__ import annotations
import argparse, configparser, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BADGE_MARK = "colab.research.google.com/github/"
INSTALL_MARK = "# Colab or a fresh machine: install the course"
KERNELSPEC = {"display_name": "python3", "language": "python", "name": "python3"}
SOLUTION_MARK = "# solution"   # the first line of an exercise's solution cell (settings.ini keeps the `jupyter` cell metadata)


def settings() -> dict:
    cp = configparser.ConfigParser(); cp.read(ROOT / "settings.ini")
    return dict(cp["DEFAULT"])


def badge_source(fname: str, cfg: dict) -> str:
    "Markdown of the badge for notebook `fname` (a file name in the notebooks folder)."
    repo = cfg["git_url"].rstrip("/").removeprefix("https://github.com/")
    url = f"https://colab.research.google.com/github/{repo}/blob/{cfg.get('branch', 'main')}/{cfg.get('nbs_path', 'nbs')}/{fname}"
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})\n\n"
            "On Colab (or any machine without the course), run the next cell first: it installs the course. "
            "Here and in CI it does nothing.")


def install_source(cfg: dict) -> str:
    "The install cell: pure Python, a no-op when `moe_course` imports."
    return f'''#| hide
{INSTALL_MARK} when `moe_course` is not importable (a no-op here)
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("moe_course") is None:
    repo = os.path.abspath("{cfg['repo']}")
    if not os.path.isdir(repo): subprocess.run(["git", "clone", "--depth", "1", "{cfg['git_url']}", repo], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", repo], check=True)
    sys.path.insert(0, repo)                                    # an editable install is seen by new kernels only
    os.environ["MOE_COURSE_SAMPLES"] = os.path.join(repo, "data")   # the bundled samples
    os.chdir(os.path.join(repo, "{cfg.get('nbs_path', 'nbs')}"))   # the chapters' relative paths (../results)'''


def _src(c) -> str: return "".join(c["source"]) if isinstance(c["source"], list) else c["source"]


def _cell(kind: str, src: str, cid: str) -> dict:
    c = dict(cell_type=kind, id=cid, metadata={}, source=src.splitlines(True))
    if kind == "code": c.update(execution_count=None, outputs=[])
    return c


def refresh(nb: dict, fname: str, cfg: dict) -> dict:
    "`nb` with exactly one badge cell and one install cell right after the title cell, and the course's kernelspec."
    cells = [c for c in nb["cells"] if not (c["cell_type"] == "markdown" and BADGE_MARK in _src(c))
             and not (c["cell_type"] == "code" and INSTALL_MARK in _src(c))]
    title = next((i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and _src(c).lstrip().startswith("# ")), -1)
    cells[title + 1:title + 1] = [_cell("markdown", badge_source(fname, cfg), "colab-badge"),
                                  _cell("code", install_source(cfg), "colab-install")]
    for c in cells:   # exercise solutions start collapsed in JupyterLab (try first, then click to open); CI still runs them
        if c["cell_type"] == "code" and _src(c).startswith(SOLUTION_MARK):
            c.setdefault("metadata", {}).setdefault("jupyter", {})["source_hidden"] = True
    nb["cells"] = cells
    nb.setdefault("metadata", {})["kernelspec"] = dict(KERNELSPEC)
    return nb


def chapters() -> list[Path]: return sorted((ROOT / "nbs").glob("[0-9][0-9]_*.ipynb"))


def dumps(nb) -> str: return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only report chapters that would change")
    a, cfg, stale = ap.parse_args(argv), settings(), []
    for p in chapters():
        text = p.read_text(encoding="utf-8")
        new = dumps(refresh(json.loads(text), p.name, cfg))
        if json.loads(new) != json.loads(text):
            stale.append(p.name)
            if not a.check: p.write_text(new, encoding="utf-8")
    idx = ROOT / "nbs" / "index.ipynb"   # not a chapter (no badge), but the same kernelspec
    if idx.exists():
        nb = json.loads(idx.read_text(encoding="utf-8"))
        if nb.get("metadata", {}).get("kernelspec") != KERNELSPEC:
            stale.append(idx.name)
            if not a.check: nb.setdefault("metadata", {})["kernelspec"] = dict(KERNELSPEC); idx.write_text(dumps(nb), encoding="utf-8")
    if a.check:
        if stale: print("colab: badge/install cell missing or stale in " + ", ".join(stale) + ": run python tools/colab.py")
        return 1 if stale else 0
    print(f"colab: {len(stale)} notebook(s) updated, {len(chapters()) + 1 - len(stale)} already current")
    if stale:  # nbdev's own JSON layout and cell ids
        import os
        from nbdev.clean import nbdev_clean
        cwd = os.getcwd(); os.chdir(ROOT)
        try:
            for n in stale: nbdev_clean(fname=str(ROOT / "nbs" / n))
        finally: os.chdir(cwd)
    return 0


if __name__ == "__main__": sys.exit(main())
