#!/usr/bin/env bash
# One-shot GPU run of chapter 18_pretrain (prepared for an H200; device budget: 8 minutes for pretraining +
# fine-tuning). Installs a CUDA build of torch into .venv if needed, then runs the gpu preset and leaves the
# record in results/pretrain_imdb_gpu.json (and a copy in $OUT when set, e.g. on a lent device machine).
set -euo pipefail
cd "$(dirname "$0")/.."
make install TORCH=torch >/dev/null
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
.venv/bin/python experiments/pretrain_imdb.py --preset gpu --time-budget-s "${BUDGET_S:-480}" "$@"
if [ -n "${OUT:-}" ]; then cp results/pretrain_imdb_gpu.json "$OUT/"; fi
