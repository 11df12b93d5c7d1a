#!/usr/bin/env bash
# Issue 11's GPU checks in one run, about 6-8 minutes on one H200. Each step writes a JSON record stamped with
# device, commit and wall time (moe_course.core.save_result) into $OUT (set by the device runner) or results/.
#   bash tools/gpu_check.sh               # on the GPU machine (data: $MOE_COURSE_DATA or shared/data, else no epoch)
#   bash tools/gpu_check.sh --cpu-smoke   # every step at tiny shapes on the CPU (a minute or two): checks the script
# Steps: 1. benchmarks/moe_dispatch.py in bf16 (dense, grouped, padded, einsum, random, HF, the old layer), eager,
# then compiled at the target sizes; 2. a training step under torch.cuda.set_sync_debug_mode("error");
# 3. training throughput of the imdb-switch-gpu model, eager vs compiled; 4. one compiled imdb-switch-gpu epoch on
# the real IMDB data, if it is there. Steps 1-3 need torch, transformers and accelerate (all on the H200 image);
# step 4 also needs 🤗 datasets and fastcore, which that image lacks: carry their wheels (device README, `.whl`).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}; [ -x "$PY" ] || PY=python3
TAG=${TAG:-h200}
SMOKE=0; [ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
if [ $SMOKE = 1 ]; then RES=${OUT:-/tmp/gpu_check_smoke}; TAG=cpu_smoke; else RES=${OUT:-results}; fi
mkdir -p "$RES"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # moe_course from this tree, installed or not
t0=$(date +%s); failed=0
step() {  # step NAME SECONDS CMD...: run with a time limit, report, go on
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s, $(( $(date +%s) - t0 ))s used)"
  timeout "$limit" "$@"; local rc=$?
  [ $rc = 0 ] || { echo "!! $name failed (exit $rc)"; failed=1; }
}
if [ $SMOKE = 1 ]; then
  step benchmark 120 $PY benchmarks/moe_dispatch.py --smoke --out "$RES/moe_dispatch_$TAG.json"
  step sync 120 $PY tools/gpu_check.py sync --cpu-smoke --out "$RES/sync_check_$TAG.json"
  step throughput 180 $PY tools/gpu_check.py throughput --cpu-smoke --out "$RES/imdb_switch_throughput_$TAG.json"
  step epoch 180 $PY experiments/imdb_switch.py --quick --skip-ablations --out "$RES/imdb_switch_quick_$TAG.json"
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  step benchmark 150 $PY benchmarks/moe_dispatch.py --device cuda --dtype bf16 --repeats 3 --min-time 0.3 \
       --out "$RES/moe_dispatch_$TAG.json"
  step benchmark-compiled 120 $PY benchmarks/moe_dispatch.py --device cuda --dtype bf16 --repeats 3 --min-time 0.3 \
       --compile --sizes gpu-targets --variants dense grouped padded random --out "$RES/moe_dispatch_compiled_$TAG.json"
  step sync 90 $PY tools/gpu_check.py sync --out "$RES/sync_check_$TAG.json"
  step throughput 120 $PY tools/gpu_check.py throughput --steps 100 --out "$RES/imdb_switch_throughput_$TAG.json"
  DATA=${MOE_COURSE_DATA:-}
  for d in shared/data ../shared/data; do [ -z "$DATA" ] && [ -f "$d/imdb/train.parquet" ] && DATA=$d; done
  if [ -n "$DATA" ]; then
    step epoch 180 $PY experiments/imdb_switch.py --data-dir "$DATA" --skip-ablations --set epochs=1 \
         --out "$RES/imdb_switch_compiled_1epoch_$TAG.json" --run-dir /tmp/imdb-switch-gpu-check
  else echo "== epoch: skipped (no IMDB data: set MOE_COURSE_DATA or provide shared/data/imdb/*.parquet)"; fi
fi
echo "== done in $(( $(date +%s) - t0 ))s; records in $RES:"; ls -l "$RES"
exit $failed
