#!/usr/bin/env python
"""Execute notebooks the way `nbdev_test` does and save their outputs into the .ipynb files (`make outputs`).

Cells flagged with a `tst_flags` directive of settings.ini (`#| slow`, `#| gpu`, `#| notest`), `#| eval: false` cells
and `nbdev_export()` cells are skipped, exactly as `nbdev.test.test_nb` skips them; every cell's old outputs are
cleared first, so a skipped cell or one that prints nothing keeps none. Each notebook runs in its own Python process, in an `execnb.shell.CaptureShell`, with the notebook's folder
as working directory. Outputs are made fit to commit: figures are PNGs at `--dpi`, progress bars are off
(`TQDM_DISABLE` and the Hugging Face switches) and carriage-return redraws keep only their final line, widgets draw
their static figure (`MOE_COURSE_STATIC=1`), and machine paths are rewritten (the checkout -> a path relative to the
notebook, the home folder -> `~`, the temp folder -> `<tmp>`). Then `nbdev_clean` runs on the notebooks written.

    python tools/run_notebooks.py                      # every notebook in nbs/
    python tools/run_notebooks.py nbs/12_adversarial.ipynb nbs/10_optim.ipynb
    python tools/run_notebooks.py --jobs 2 --timeout 900
A notebook whose cell raises is not written; the command then exits with status 1 and shows the traceback.
"""
from __future__ import annotations
import argparse, json, os, re, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
ENV = dict(TQDM_DISABLE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1", MOE_COURSE_STATIC="1")


def skip_flags() -> set[str]:
    "The `tst_flags` of settings.ini (cells flagged with one of them are not run), as nbdev_test reads them."
    from nbdev.config import get_config
    return set(str(get_config(path=ROOT).get("tst_flags", "")).split())


def _no_eval(cell, flags) -> bool:
    "nbdev.test.test_nb's rule: skip non-code cells, `nbdev_export(` cells, `#| eval: false` and flagged cells."
    if cell.cell_type != "code": return True
    if "nbdev_export" + "(" in cell.source: return True
    direc = getattr(cell, "directives_", {}) or {}
    if direc.get("eval:", [""])[0].lower() == "false": return True
    return bool(flags & direc.keys())


def path_rules(nb_dir: Path) -> list[tuple[re.Pattern, str]]:
    "(absolute path prefix as a regex, replacement) pairs, most specific first: site-packages, the checkout and its parent, home, temp."
    import site, sysconfig
    rules = []
    pkgs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    rules += [(p, "site-packages") for p in pkgs if p]
    rules += [(str(ROOT.parent), os.path.relpath(ROOT.parent, nb_dir)), (str(ROOT), os.path.relpath(ROOT, nb_dir))]
    rules.sort(key=lambda r: -len(r[0]))  # the checkout before its parent
    rules += [(sys.prefix, "<python>"), (str(Path(tempfile.gettempdir()).resolve()), "<tmp>"),
              (tempfile.gettempdir(), "<tmp>"), (str(Path.home()), "~")]
    seen, out = set(), []
    for a, b in rules:  # a prefix matches only up to a path-component boundary: /tmp, not the /tmp of /tmpab12
        if len(a) > 1 and a not in seen: seen.add(a); out.append((re.compile(re.escape(a) + r"(?![\w.-])"), b))
    return out


def scrub_text(s: str, rules) -> str:
    "Rewrite machine paths, and keep only the last redraw of lines drawn with carriage returns (progress bars)."
    for a, b in rules: s = a.sub(lambda m: b, s)
    return "\n".join(line.rstrip("\r").split("\r")[-1] for line in s.split("\n"))


def scrub_outputs(outputs, rules) -> list:
    "`scrub_text` applied to every stream, text/* item and traceback of a cell's outputs."
    fix = lambda v: scrub_text("".join(v), rules).splitlines(True) if isinstance(v, list) else scrub_text(v, rules)
    for o in outputs:
        if "text" in o: o["text"] = fix(o["text"])
        for k, v in (o.get("data") or {}).items():
            if k.startswith("text/") or k == "application/javascript": o["data"][k] = fix(v)
        if "traceback" in o: o["traceback"] = [scrub_text(t, rules) for t in o["traceback"]]
        if "evalue" in o: o["evalue"] = scrub_text(o["evalue"], rules)
    return [o for o in outputs if not (o.get("output_type") == "stream" and not "".join(o.get("text", "")).strip())]


def run_one(path: Path, dpi: int) -> int:
    "Execute `path` in this process and write its outputs back (the child side of `main`)."
    os.environ.update(ENV); os.environ["IN_TEST"] = "1"
    from execnb.nbio import write_nb
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    from nbdev.process import NBProcessor
    flags = skip_flags()
    nb = NBProcessor(path, rm_directives=False).nb          # directives parsed, sources untouched
    shell = CaptureShell(path, mpl_format="png")
    shell.run(f"import matplotlib as _mpl; _mpl.rcParams.update({{'figure.dpi': {dpi}, 'savefig.dpi': {dpi}}}); del _mpl")
    rules = path_rules(path.parent)
    for cell in nb.cells:  # execnb keeps a cell's old outputs when it prints nothing: start every cell empty
        if cell.cell_type == "code": cell.outputs, cell.execution_count = [], None
    try:
        with working_directory(path.parent):
            shell.run_all(nb, exc_stop=True, preproc=lambda c: _no_eval(c, flags))
    except Exception:
        sys.stderr.write(shell.prettytb(fname=path) + "\n")
        return 1
    for cell in nb.cells:
        if cell.cell_type == "code": cell.outputs = scrub_outputs([dict(o) for o in cell.get("outputs", [])], rules)
    write_nb(nb, path)
    return 0


def rel(p: Path) -> Path:
    "`p` relative to the checkout when it lies inside it (for messages)."
    return p.relative_to(ROOT) if p.is_relative_to(ROOT) else p


def notebooks(paths) -> list[Path]:
    "The notebooks named (files or folders), else every notebook in nbs/ (not those in _ or . folders)."
    out = []
    for p in map(Path, paths or [NBS]):
        if p.is_dir(): out += sorted(q for q in p.rglob("*.ipynb") if not any(s[0] in "_." for s in q.relative_to(p).parts))
        elif p.suffix == ".ipynb" and p.exists(): out.append(p)
        else: raise SystemExit(f"run_notebooks: no notebook {p}")
    return [p.resolve() for p in out]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", help="notebooks or folders (default: nbs/)")
    ap.add_argument("--jobs", type=int, default=1, help="notebooks run at once (default 1: the CPU is shared)")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per notebook")
    ap.add_argument("--dpi", type=int, default=80, help="resolution of the PNG figures")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: run one notebook here
    a = ap.parse_args(argv)
    if a.one: return run_one(Path(a.paths[0]).resolve(), a.dpi)
    nbs, t0 = notebooks(a.paths), time.perf_counter()

    def child(p):
        s = time.perf_counter()
        try:
            r = subprocess.run([sys.executable, __file__, "--one", "--dpi", str(a.dpi), str(p)], cwd=p.parent,
                               capture_output=True, text=True, timeout=a.timeout, env={**os.environ, **ENV})
            rc, err = r.returncode, r.stderr
        except subprocess.TimeoutExpired: rc, err = 124, f"timed out after {a.timeout} s"
        dt = time.perf_counter() - s
        print(f"{'ok  ' if rc == 0 else 'FAIL'} {dt:7.1f} s  {rel(p)}", flush=True)
        if rc: print(err[-6000:], file=sys.stderr, flush=True)
        return p, rc, dt

    with ThreadPoolExecutor(max(1, a.jobs)) as ex: res = list(ex.map(child, nbs))
    done = [str(p) for p, rc, _ in res if rc == 0]
    if done:
        from nbdev.clean import nbdev_clean
        cwd = os.getcwd(); os.chdir(ROOT)
        try:
            for f in done: nbdev_clean(fname=f)
        finally: os.chdir(cwd)
    failed = [p for p, rc, _ in res if rc]
    print(f"{len(done)} notebook(s) written, {len(failed)} failed, {time.perf_counter() - t0:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__": sys.exit(main())
