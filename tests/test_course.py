"""The course as a student meets it: every chapter has at least two exercises whose checks run by default (so CI's
`nbdev_test` runs the solutions and a solution cannot rot), links at least one paper, and opens in Colab with a first
cell that installs the library; the index starts with a syllabus that lists every chapter."""
import json, re, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
sys.path.insert(0, str(ROOT / "tools"))
import colab  # noqa: E402
import run_notebooks as rn  # noqa: E402

CHAPTERS = sorted(NBS.glob("[0-9][0-9]_*.ipynb"))
PAPER = re.compile(r"https?://(arxiv\.org/(abs|pdf)/|aclanthology\.org/|(www\.)?jmlr\.org/|openreview\.net/|"
                   r"papers\.nips\.cc/|proceedings\.(neurips\.cc|mlr\.press)/|dl\.acm\.org/|doi\.org/|"
                   r"www\.aclweb\.org/anthology/|www\.bioinf\.jku\.at/publications/|ai\.stanford\.edu/~amaas/papers/)")
EXERCISE = re.compile(r"\*\*Exercise (\d+)")          # **Exercise 3.** anywhere
LISTED = re.compile(r"^\s*(\d+)\.\s+\*\*", re.M)      # 3. **Title.** under an Exercises heading
CHECK = re.compile(r"\bassert\b|\btest_(eq|close|ne|fail|is|shuffled|stdout|warns|eq_type)\b")


def _src(c): return "".join(c["source"]) if isinstance(c["source"], list) else c["source"]


def _runs(c, flags):
    from fastcore.basics import AttrDict
    from nbdev.process import extract_directives
    x = AttrDict(cell_type=c["cell_type"], source=_src(c))
    x.directives_ = extract_directives(x, remove=False) if x.cell_type == "code" else {}
    return not rn._no_eval(x, flags)


def exercises(nb) -> tuple[set, int]:
    "(numbers of the exercises, number of default-run check cells after the first exercise) of a notebook."
    nums, first, in_section = set(), None, False
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] != "markdown": continue
        s = _src(c)
        found = set(EXERCISE.findall(s))
        for part in re.split(r"^(?=#+\s)", s, flags=re.M):   # a cell may hold several headings
            if re.match(r"#+\s", part): in_section = bool(re.match(r"#+\s+(Checked\s+)?Exercises\b", part, re.I))
            if in_section: found |= set(LISTED.findall(part))
        if found and first is None: first = i
        nums |= found
    flags = rn.skip_flags()
    checks = sum(1 for c in nb["cells"][(first or 0):] if first is not None and c["cell_type"] == "code"
                 and CHECK.search(_src(c)) and _runs(c, flags))
    return nums, checks


def _nb(p): return json.loads(p.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_two_checked_exercises(path):
    nums, checks = exercises(_nb(path))
    assert len(nums) >= 2, f"{path.name}: {len(nums)} exercise(s); a chapter needs at least two"
    assert checks >= 2, f"{path.name}: {checks} check cell(s) that run by default after the first exercise; need >= 2"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_links_a_paper(path):
    md = "\n".join(_src(c) for c in _nb(path)["cells"] if c["cell_type"] == "markdown")
    assert PAPER.search(md), f"{path.name}: no link to a paper (arXiv, ACL Anthology, JMLR, ...)"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_colab_badge_and_install_cell(path):
    nb, cfg = _nb(path), colab.settings()
    src = [_src(c) for c in nb["cells"]]
    assert any(colab.badge_source(path.name, cfg) == s for s in src), f"{path.name}: no current Colab badge: run tools/colab.py"
    first_code = next(s for c, s in zip(nb["cells"], src) if c["cell_type"] == "code")
    assert colab.INSTALL_MARK in first_code, f"{path.name}: the first code cell must install the course: run tools/colab.py"
    assert nb["metadata"]["kernelspec"] == colab.KERNELSPEC
    open_solutions = [c.get("id") for c, s in zip(nb["cells"], src) if c["cell_type"] == "code" and s.startswith(colab.SOLUTION_MARK)
                      and not c.get("metadata", {}).get("jupyter", {}).get("source_hidden")]
    assert not open_solutions, f"{path.name}: solution cells not collapsed {open_solutions}: run tools/colab.py"


def test_colab_tool_is_idempotent():
    assert colab.main(["--check"]) == 0
    nb = dict(cells=[dict(cell_type="markdown", id="t", metadata={}, source="# T\n> s"),
                     dict(cell_type="code", id="c", metadata={}, source="x = 1", outputs=[], execution_count=None)], metadata={})
    once = colab.refresh(json.loads(json.dumps(nb)), "05_x.ipynb", colab.settings())
    twice = colab.refresh(json.loads(json.dumps(once)), "05_x.ipynb", colab.settings())
    assert once == twice and [c["id"] for c in once["cells"]] == ["t", "colab-badge", "colab-install", "c"]
    assert "blob/main/nbs/05_x.ipynb" in _src(once["cells"][1])


def test_install_cell_is_a_noop_here(tmp_path, monkeypatch):
    "Where moe_course imports, the install cell runs nothing and leaves the working directory alone."
    monkeypatch.chdir(tmp_path)
    import subprocess
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    exec(compile(colab.install_source(colab.settings()), "install", "exec"), {})
    assert calls == [] and Path.cwd() == tmp_path and not (tmp_path / "moe-course").exists()


def test_exercise_counter():
    md = lambda s: dict(cell_type="markdown", source=s)
    code = lambda s: dict(cell_type="code", source=s)
    nb = dict(cells=[md("# T"), md("Intro. 1. **Not an exercise.**"), md("## Exercises\n1. **A.** do\n2. **B.** do"),
                     code("# solution\nx = 1"), code("assert x == 1"), code("#| slow\nassert x"), code("test_eq(x, 1)"),
                     md("## Papers\n1. **Paper.**")])
    assert exercises(nb) == ({"1", "2"}, 2)
    assert exercises(dict(cells=[md("**Exercise 1.** a"), code("assert 1"), md("**Exercise 2.** b")])) == ({"1", "2"}, 1)
    assert exercises(dict(cells=[md("Text.\n## Exercises\n1. **A.**\n2. **B.**\n## Papers\n3. **C.**"), code("assert 1")])) == ({"1", "2"}, 1)


def test_syllabus_lists_every_chapter():
    idx = "\n".join(_src(c) for c in _nb(NBS / "index.ipynb")["cells"] if c["cell_type"] == "markdown")
    assert re.search(r"^#+\s+Syllabus", idx, re.M), "index.ipynb: no Syllabus section"
    missing = [p.stem for p in CHAPTERS if f"`{p.stem}`" not in idx]
    assert not missing, f"index.ipynb: the syllabus does not link {missing}"
