#!/usr/bin/env bash
# Multi-node GPU training without SLURM: run this on every node, the same command,
# with the node's rank; node 0 hosts the coordinator.
#
#   COORDINATOR=10.0.0.1:8476 NUM_NODES=2 NODE_RANK=0 launch/gpu_node.sh pretrain \
#       --config=configs/pretrain.py:B --workdir=/shared/runs/vitb
#   COORDINATOR=10.0.0.1:8476 NUM_NODES=2 NODE_RANK=1 launch/gpu_node.sh pretrain ...   # on node 1
#
# These become JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, which
# auvmae_jax/distributed.py passes to jax.distributed.initialize.
set -euo pipefail
: "${COORDINATOR:?host:port of node 0}" "${NUM_NODES:?number of nodes}" "${NODE_RANK:?this node, from 0}"
export JAX_COORDINATOR_ADDRESS="$COORDINATOR" JAX_NUM_PROCESSES="$NUM_NODES" JAX_PROCESS_ID="$NODE_RANK"
source "$(dirname "$0")/xla_gpu_flags.sh"
exec auvmae "$@"
