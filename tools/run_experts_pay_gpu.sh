#!/usr/bin/env bash
# One-shot GPU run of chapters 19_experts_pay and 20_experts_carry (prepared; run on CPU only as PRESET=tiny, since
# no GPU was lent when it was written). Installs a CUDA build of torch into .venv if needed, then:
#  1. the byte-level scaling grid at the gpu preset (d 512, 6 layers, N in 1..32, 20,000 steps of 64 x 256 bytes);
#  2. fine-tunes its dense and best-MoE backbones on IMDB (2,048 bytes per review, 3 epochs, 3 seeds);
#  3. experts_carry.py: MLM-pretrains the imdb-switch-gpu encoder dense / MoE / upcycled and fine-tunes each (3 seeds),
#     both embedding tables started at N(0, 0.02^2) (BERT's start, the one where the MLM leaves the unigram plateau on
#     the CPU), fine-tuned with the encoder at 0.25 x lr (ULMFiT's discriminative rates, chapter 20).
# Leaves results/experts_pay_<p>.json, results/experts_pay_finetune_<p>.json, results/experts_carry_<p>.json (copies
# in $OUT when set). Size the work to the device time you have: STEPS=4000 CARRY_STEPS=4000 bash tools/run_experts_pay_gpu.sh
# Test it on a CPU in a minute: PRESET=tiny bash tools/run_experts_pay_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
P="${PRESET:-gpu}"
if [ "$P" = gpu ]; then
  make install TORCH=torch >/dev/null
  .venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
fi
DATA=(--data-dir "${DATA_DIR:-../shared/data}")
[ "$P" = tiny ] && DATA=()
T="${TMPDIR:-/tmp}"
if [ "$P" = tiny ]; then RES="$T/moe_course_experts_pay"; CRES="$T/moe_course_experts_carry"; else RES=results; CRES=results; fi
.venv/bin/python experiments/experts_pay.py --preset "$P" ${STEPS:+--steps "$STEPS"} "${DATA[@]}"
.venv/bin/python experiments/experts_pay_finetune.py --preset "$P" "${DATA[@]}"
.venv/bin/python experiments/experts_carry.py --preset "$P" --upcycle --emb-std 0.02 --pos-std 0.02 --encoder-lr-mult 0.25 ${CARRY_STEPS:+--mlm-steps "$CARRY_STEPS"} "${DATA[@]}"
if [ -n "${OUT:-}" ]; then cp "$RES/experts_pay_$P.json" "$RES/experts_pay_finetune_$P.json" "$CRES/experts_carry_$P.json" "$OUT/"; fi
