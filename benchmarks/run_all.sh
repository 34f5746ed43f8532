#!/usr/bin/env bash
# The full benchmark set on one GPU, about 8 minutes on an H100; no network needed.
#
#   OUT=/some/dir benchmarks/run_all.sh          # default OUT: ./bench_out
#
# Writes $OUT/log.txt (everything printed), $OUT/steps.jsonl, $OUT/hf.jsonl and
# $OUT/input.jsonl (one JSON object per measurement). Each part has a time limit so
# that one slow part cannot eat the others; a part that fails is reported and skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./bench_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
source launch/xla_gpu_flags.sh
LOG="$OUT/log.txt"

part() {  # part SECONDS MODULE ARGS...
  local limit=$1; shift
  echo "== $(date -u +%H:%M:%S) $* (limit ${limit}s)" | tee -a "$LOG"
  timeout "$limit" "$PY" -m "$@" 2>&1 | grep -v -e "^WARNING" -e "^I0000" | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "== part ended with status $rc" | tee -a "$LOG"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"; } 2>&1 | tee -a "$LOG"
# Headline: ViT-B pre-training (mask 0.9 and 0.0), fine-tuning and inference at 16, 32, 128 frames.
part 250 benchmarks.bench_steps --presets=B --frames=16,32,128 --steps=8 --out="$OUT/steps.jsonl"
# PyTorch transformers VideoMAE on the same preset, batch and device.
part 100 benchmarks.bench_hf --preset=B --frames=16 --batch=32 --out="$OUT/hf.jsonl"
# Smaller presets.
part 150 benchmarks.bench_steps --presets=S,tiny --frames=16,32,128 --tasks=pretrain,finetune \
  --mask_ratios=0.9 --steps=8 --out="$OUT/steps.jsonl"
# Activation checkpointing: what it costs where memory is tightest.
part 60 benchmarks.bench_steps --presets=B --frames=128 --tasks=pretrain --mask_ratios=0.0 --remat \
  --steps=5 --out="$OUT/steps.jsonl"
# The input pipeline beside the model's consumption (skips where grain/TFDS are missing).
part 60 benchmarks.bench_input --workers=0,4,8,16 --model_results="$OUT/steps.jsonl" --out="$OUT/input.jsonl"
echo "== $(date -u +%H:%M:%S) done; results in $OUT" | tee -a "$LOG"
