"""Write README.md from nbs/index.ipynb, offline (nbdev_readme needs Quarto).

`python tools/readme.py` rewrites README.md; `python tools/readme.py --check` exits 1 if it is out of step.
Markdown cells are copied; code cells become ```python blocks; cells starting with `#| hide` are skipped."""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = "<!-- Generated from nbs/index.ipynb by `python tools/readme.py`: edit the notebook, not this file. -->\n\n"

def render(nb_path=ROOT / "nbs" / "index.ipynb") -> str:
    parts = []
    for cell in json.loads(Path(nb_path).read_text(encoding="utf-8"))["cells"]:
        src = "".join(cell["source"]).strip()
        if not src or src.startswith("#| hide"): continue
        if cell["cell_type"] == "markdown": parts.append(src)
        elif cell["cell_type"] == "code":
            code = "\n".join(l for l in src.splitlines() if not l.startswith("#|"))
            parts.append(f"```python\n{code}\n```")
    return HEADER + "\n\n".join(parts) + "\n"

def main(argv):
    text, readme = render(), ROOT / "README.md"
    if "--check" in argv:
        if not readme.exists() or readme.read_text(encoding="utf-8") != text:
            print("README.md is out of step with nbs/index.ipynb: run `python tools/readme.py`.", file=sys.stderr)
            return 1
        print("README.md is in step with nbs/index.ipynb.")
        return 0
    readme.write_text(text, encoding="utf-8")
    print(f"wrote {readme}")
    return 0

if __name__ == "__main__": sys.exit(main(sys.argv[1:]))
