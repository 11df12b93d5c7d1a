"""The committed notebooks: every chapter carries the outputs of its default cells (`make outputs`), within the size
limits, without paths of the machine that ran it and without progress-bar noise; and the runner's own rules."""
import base64, json, re, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
sys.path.insert(0, str(ROOT / "tools"))
import run_notebooks as rn  # noqa: E402

CHAPTERS = sorted(NBS.glob("[0-9][0-9]_*.ipynb"))
MAX_IMAGE, MAX_NBS = 200 * 1024, 8 * 2**20
# absolute paths of a local machine: the usual home, temp and work folders, this checkout and this home folder
LOCAL = [re.compile(r"(?<![\w.~<])(/home/|/Users/|/root/|/work/|/tmp/|/private/var/|/var/folders/|[A-Za-z]:\\\\?Users\\\\)")]
LOCAL += [re.compile(re.escape(str(p))) for p in (ROOT, Path.home()) if len(str(p)) > 1]
BAR = re.compile(r"\d+%\|[^|\n]*\|")  # a tqdm bar: ' 42%|████      | 21/50'


def _nb(path): return json.loads(path.read_text(encoding="utf-8"))


def _texts(nb):
    "(cell index, text) of every textual output: streams, text/* data and tracebacks."
    for i, c in enumerate(nb["cells"]):
        for o in c.get("outputs", []):
            if "text" in o: yield i, "".join(o["text"])
            for k, v in (o.get("data") or {}).items():
                if k.startswith("text/"): yield i, "".join(v)
            if "traceback" in o: yield i, "\n".join(o["traceback"])


def _images(nb):
    "(cell index, mime type, decoded size in bytes) of every image output."
    for i, c in enumerate(nb["cells"]):
        for o in c.get("outputs", []):
            for k, v in (o.get("data") or {}).items():
                if k.startswith("image/"):
                    data = "".join(v) if isinstance(v, list) else v
                    yield i, k, len(data.encode()) if k.endswith("svg+xml") else len(base64.b64decode(data))


def _runs(cell, flags) -> bool:
    "Would `make outputs` (and nbdev_test) execute this cell?"
    from fastcore.basics import AttrDict
    from nbdev.process import extract_directives
    c = AttrDict(cell_type=cell["cell_type"], source="".join(cell["source"]))
    c.directives_ = extract_directives(c, remove=False) if c.cell_type == "code" else {}
    return not rn._no_eval(c, flags)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_has_outputs(path):
    nb, flags = _nb(path), rn.skip_flags()
    runs = [c for c in nb["cells"] if _runs(c, flags)]
    if runs:
        assert any(c.get("outputs") for c in runs), f"{path.name} has code cells but no outputs: run `make outputs NBS={path.relative_to(ROOT)}`"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_outputs_hold_no_local_paths(path):
    bad = [(i, m.group(0)) for i, t in _texts(_nb(path)) for pat in LOCAL for m in [pat.search(t)] if m]
    assert not bad, f"{path.name}: outputs hold absolute local paths (cell, match): {bad[:5]}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_outputs_hold_no_progress_bars(path):
    bad = [i for i, t in _texts(_nb(path)) if "\r" in t or BAR.search(t)]
    assert not bad, f"{path.name}: progress-bar output in cells {bad}"


@pytest.mark.parametrize("path", sorted(NBS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_images_are_small(path):
    big = [(i, k, n) for i, k, n in _images(_nb(path)) if n > MAX_IMAGE]
    assert not big, f"{path.name}: images over {MAX_IMAGE // 1024} KB (cell, type, bytes): {big}"


def test_nbs_folder_size():
    total = sum(p.stat().st_size for p in NBS.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.parts))
    assert total < MAX_NBS, f"nbs/ holds {total / 2**20:.1f} MiB, over the {MAX_NBS / 2**20:.0f} MiB limit"


def test_no_run_folders_in_nbs():
    stray = [p.name for p in NBS.iterdir() if p.is_dir() and p.name in ("runs", "results", "checkpoints")]
    assert not stray, f"runs started from notebooks wrote into nbs/: {stray}; write under the repository root or a temp dir"


# --- the runner's rules, on made-up cells and text
def test_skip_rule_is_nbdevs():
    flags = rn.skip_flags()
    assert {"slow", "gpu", "notest"} <= flags
    cell = lambda src: dict(cell_type="code", source=src)
    assert _runs(cell("x = 1"), flags)
    assert not _runs(cell("#| gpu\nx = 1"), flags) and not _runs(cell("#| slow\nx = 1"), flags)
    assert not _runs(cell("#| eval: false\nx = 1"), flags)
    assert not _runs(cell("from nbdev import nbdev_export\nnbdev_export()"), flags)
    assert not _runs(dict(cell_type="markdown", source="# title"), flags)


def test_scrub_paths_and_bars(tmp_path):
    rules = rn.path_rules(NBS)
    s = rn.scrub_text(f"loaded {ROOT}/data/imdb and {ROOT.parent}/shared/models, home {Path.home()}/x\n", rules)
    assert str(ROOT) not in s and "../data/imdb" in s and "../../shared/models" in s
    import tempfile
    t = rn.scrub_text(f"saved to {tempfile.gettempdir()}/tmpab12/last.pt", rules)
    assert t == "saved to <tmp>/tmpab12/last.pt"  # the temp folder, not the /tmp inside /tmpab12
    assert rn.scrub_text("  0%|     | 0/9\r100%|#####| 9/9\n", []) == "100%|#####| 9/9\n"
    outs = rn.scrub_outputs([dict(output_type="stream", name="stderr", text=["\r"]),
                             dict(output_type="execute_result", data={"text/plain": [f"'{ROOT}/x'"]})], rules)
    assert len(outs) == 1 and outs[0]["data"]["text/plain"] == ["'../x'"]


def test_runner_end_to_end(tmp_path):
    "A notebook run by the runner: default cells run, flagged ones don't, stale outputs go, paths are scrubbed."
    code = lambda src, outputs=(): dict(cell_type="code", execution_count=None, id=f"c{abs(hash(src)) % 10**6}",
                                        metadata={}, outputs=list(outputs), source=src)
    stale = dict(output_type="stream", name="stdout", text=["old output\n"])
    nb = dict(nbformat=4, nbformat_minor=5, metadata={}, cells=[
        dict(cell_type="markdown", id="m0", metadata={}, source="# T\n> s"),
        code("x = 41 + 1\nx"),
        code("#| gpu\nraise RuntimeError('a gpu cell ran')", [stale]),
        code("y = 2", [stale]),
        code("import os, matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()\nprint(os.getcwd())")])
    p = tmp_path / "t.ipynb"; p.write_text(json.dumps(nb))
    assert rn.main([str(p)]) == 0
    cells = _nb(p)["cells"]
    assert "".join(cells[1]["outputs"][0]["data"]["text/plain"]) == "42"
    assert cells[2]["outputs"] == [] and cells[3]["outputs"] == []        # skipped / silent: no stale output
    outs = cells[4]["outputs"]
    assert any("image/png" in o.get("data", {}) for o in outs)
    printed = "".join(o.get("text", "") if isinstance(o.get("text"), str) else "".join(o.get("text", [])) for o in outs)
    assert str(tmp_path) not in printed and printed.strip()               # the working directory, scrubbed
    assert all(n <= MAX_IMAGE for _, _, n in _images(_nb(p)))
