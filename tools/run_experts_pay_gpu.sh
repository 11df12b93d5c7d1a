#!/usr/bin/env bash
# One-shot GPU run of chapters 19_experts_pay and 20_experts_carry (prepared, never run: no GPU was lent when it was
# written). Installs a CUDA build of torch into .venv if needed, runs the scaling grid at the gpu preset (d 512,
# 6 layers, N in 1..32, 20,000 steps of 64 x 256 bytes), then fine-tunes the dense and best-MoE backbones on IMDB
# (2,048 bytes per review, 3 epochs, 3 seeds), leaving results/experts_pay_gpu.json and
# results/experts_pay_finetune_gpu.json (copies in $OUT when set). Size the steps to the device time you have:
# STEPS=4000 bash tools/run_experts_pay_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
make install TORCH=torch >/dev/null
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
.venv/bin/python experiments/experts_pay.py --preset gpu ${STEPS:+--steps "$STEPS"} --data-dir "${DATA_DIR:-../shared/data}"
.venv/bin/python experiments/experts_pay_finetune.py --preset gpu --data-dir "${DATA_DIR:-../shared/data}"
if [ -n "${OUT:-}" ]; then cp results/experts_pay_gpu.json results/experts_pay_finetune_gpu.json "$OUT/"; fi
