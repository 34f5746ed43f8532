#!/usr/bin/env bash
# Train on all GPUs of one host: one process drives every local GPU.
#
#   launch/gpu_single_host.sh pretrain --config=configs/pretrain.py:B --workdir=runs/vitb
#
# The default mesh puts every device on the `data` axis; shard weights with
# --config.mesh.fsdp=N. Extra XLA flags can be added through XLA_FLAGS as usual.
set -euo pipefail
# Overlap collectives with compute, as recommended for GPU training with XLA.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
# Let XLA take most GPU memory up front (large clips need it); the rest stays for cuDNN.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
exec auvmae "$@"
