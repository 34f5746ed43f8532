#!/usr/bin/env bash
# The benchmark set on one GPU, 9-10 minutes on an H100 for parts 1-5 (compiles take
# most of it), about 3 more for the step profile (part 7) and 2 for decoder masking (part 8);
# no network needed.
#
#   OUT=/some/dir benchmarks/run_all.sh          # default OUT: ./bench_out
#   PARTS="1 2" benchmarks/run_all.sh            # only some parts (default: all)
#   QUICK=1 PRESET=mini benchmarks/run_all.sh     # CPU smoke sizes: checks the script, not figures
#   STEP_TASKS=pretrain MASKS=0.9 PROFILE_TASKS=pretrain ...   # fewer setups in parts 1 and 7
#
# Writes $OUT/log.txt (everything printed), $OUT/steps.jsonl, $OUT/hf.jsonl and
# $OUT/input.jsonl, $OUT/profile.jsonl, $OUT/check.jsonl (one JSON object per measurement) and the
# profiler trace of ViT-B pre-training steps under $OUT/trace. Each part has a time limit so
# that one slow part cannot eat the others; a part that fails is reported and skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./bench_out}"
PARTS="${PARTS:-0 1 2 3 4 5 7 8}"  # 6 (ViT-S at 16, 32, 128 frames) is extra
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
PRESET="${PRESET:-B}"  # the model of parts 1, 2, 3 and 7
STEP_TASKS="${STEP_TASKS:-pretrain,finetune,infer}"  # part 1
MASKS="${MASKS:-0.9,0.0}"  # part 1's pre-training mask ratios
PROFILE_TASKS="${PROFILE_TASKS:-pretrain finetune}"  # part 7
Q="${QUICK:+--quick}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
source launch/xla_gpu_flags.sh
LOG="$OUT/log.txt"

part() {  # part NUMBER SECONDS MODULE ARGS...
  local n=$1 limit=$2; shift 2
  [[ " $PARTS " == *" $n "* ]] || return 0
  echo "== part $n, $(date -u +%H:%M:%S): $* (limit ${limit}s)" | tee -a "$LOG"
  timeout "$limit" "$PY" -m "$@" 2>&1 | grep --line-buffered -v -e "^WARNING" -e "^I0000" | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "== part $n ended with status $rc" | tee -a "$LOG"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"; } 2>&1 | tee -a "$LOG"
# 0. Numbers before speed: cuDNN's fused attention (never run by the CPU tests) against ours.
part 0 90 benchmarks.check_attention --out="$OUT/check.jsonl" $Q
STEPS="benchmarks.bench_steps --steps=10 --out=$OUT/steps.jsonl $Q"
# Each setup costs 40-60 s (process start, sharded init, XLA compile), its timed steps a second.
# 1. Headline: ViT-B, 16 frames: pre-training at mask 0.9 and 0.0, fine-tuning, inference.
part 1 230 $STEPS --presets=$PRESET --frames=16 --tasks=$STEP_TASKS --mask_ratios=$MASKS
# 2. PyTorch transformers VideoMAE on the same preset, batch and device.
part 2 210 benchmarks.bench_hf --preset=$PRESET --frames=16 --batch=32 --out="$OUT/hf.jsonl" $Q
# 3. The paper's fine-tuning clip length (same tokens per batch: 4 clips).
part 3 80 $STEPS --presets=$PRESET --frames=128 --tasks=finetune
# 4. A smaller preset (S: run with PARTS=6 when there is time).
part 4 60 $STEPS --presets=tiny --frames=16 --tasks=pretrain --mask_ratios=0.9
part 6 200 $STEPS --presets=S --frames=16,32,128 --tasks=pretrain,finetune --mask_ratios=0.9
# 5. The input pipeline beside the model's consumption (skips where grain/TFDS are missing).
W="${QUICK:+0,2}"
part 5 120 benchmarks.bench_input --workers="${W:-0,4,8,16}" --repeats=1,4 --model_results="$OUT/steps.jsonl" --out="$OUT/input.jsonl" $Q
# 7. Where the ViT-B pre-training and fine-tuning steps spend their time: parts timed
#    apart, and a profiler trace summed per op.
for task in $PROFILE_TASKS; do  # the pre-training step also leaves its trace
  if [ "$task" = pretrain ]; then limit=240 trace=(--trace_dir="$OUT/trace"); else limit=150 trace=(); fi
  part 7 $limit benchmarks.profile_step --task=$task --preset=$PRESET --frames=16 --batch=32 \
    "${trace[@]}" --out="$OUT/profile.jsonl" $Q
done
# 8. VideoMAE V2's decoder masking (running cell, 0.5) on part 1's and part 3's clip lengths.
part 8 150 $STEPS --presets=$PRESET --frames="${DECODER_MASK_FRAMES:-16,128}" --tasks=pretrain --mask_ratios=0.9 \
  --decoder_mask_ratio=0.5
echo "== $(date -u +%H:%M:%S) done; results in $OUT" | tee -a "$LOG"
