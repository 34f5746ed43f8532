#!/usr/bin/env bash
# Train on all GPUs of one host: one process drives every local GPU.
#
#   launch/gpu_single_host.sh pretrain --config=configs/pretrain.py:B --workdir=runs/vitb
#
# The default mesh puts every device on the `data` axis; shard weights with
# --config.mesh.fsdp=N. XLA settings live in launch/xla_gpu_flags.sh.
set -euo pipefail
source "$(dirname "$0")/xla_gpu_flags.sh"
exec auvmae "$@"
