#!/usr/bin/env bash
# Fail if nbdev_export would change the library, or nbdev_clean would change a notebook.
# Works on a dev tree with uncommitted work too: it compares file hashes before and after.
set -euo pipefail
BIN=${VENV:-.venv}/bin
snap() { find moe_course nbs -type f \( -name '*.py' -o -name '*.ipynb' \) -not -path '*/.ipynb_checkpoints/*' -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum; }
before=$(snap)
"$BIN/nbdev_export"
after=$(snap)
if [ "$before" != "$after" ]; then
  echo "nbdev_export changed files: the library is out of step with the notebooks:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
"$BIN/nbdev_clean"
after2=$(snap)
if [ "$after" != "$after2" ]; then
  echo "nbdev_clean changed notebooks: run nbdev_clean and commit:" >&2
  diff <(echo "$after") <(echo "$after2") >&2 || true
  exit 1
fi
echo "nbdev_export and nbdev_clean leave the tree unchanged."
