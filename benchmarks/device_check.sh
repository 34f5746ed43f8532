#!/usr/bin/env bash
# The benchmarks that matter most, as one command for a short GPU lease (about 7 minutes
# on an H100, well inside one 10-minute call):
#
#   benchmarks/fetch_wheels.sh        # here, once: grain, TFDS, ... for the GPU image's Python, into .whl/
#   # then, through the device tool:  command "benchmarks/device_check.sh", carry [".whl"], timeout_s 560
#
# It installs the carried wheels (where .whl/ holds any) into /tmp/site, then runs
# benchmarks/run_all.sh with: cuDNN attention's values and gradients against ours (part 0),
# ViT-B pre-training (16 frames, mask 0.9) and fine-tuning step
# times (part 1), the pre-training step's parts and profiler trace (part 7), and the input
# pipeline (1 and 4 views per decoded clip) beside the model's consumption (part 5), and,
# last, the pre-training step with VideoMAE V2's decoder masking at 16 frames (part 8).
# Results under $OUT (default ./bench_out).
# Any of run_all.sh's variables can be set to change that (PARTS, STEP_TASKS, MASKS, ...).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" || echo "could not install the wheels in .whl/"
fi
export PARTS="${PARTS:-0 1 7 5 8}" STEP_TASKS="${STEP_TASKS:-pretrain,finetune}" MASKS="${MASKS:-0.9}" \
  PROFILE_TASKS="${PROFILE_TASKS:-pretrain}" DECODER_MASK_FRAMES="${DECODER_MASK_FRAMES:-16}"
exec bash benchmarks/run_all.sh
