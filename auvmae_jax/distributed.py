"""Multi-process start-up and what every process says about itself.

One program, one process per host (TPU VM worker, GPU node) or per GPU: each
process drives its local devices, `jax.distributed` joins them into one global
device set, and the mesh spans them all. `initialize()` decides from the
environment whether the job has several processes; the launchers in `launch/`
set that environment.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np

log = logging.getLogger("auvmae")

# Explicit set-up (any launcher): all three, or none of them.
EXPLICIT_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def wanted(env: dict[str, str] | None = None) -> str | None:
    """How this process should join a multi-process job, read from `env`.

    Returns 'explicit' (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID set),
    'auto' (jax detects the cluster: SLURM with several tasks, or AUVMAE_DISTRIBUTED=1,
    e.g. on every worker of a Cloud TPU pod slice), or None (one process).
    AUVMAE_DISTRIBUTED=0 forces a single process.
    """
    env = os.environ if env is None else env
    flag = env.get("AUVMAE_DISTRIBUTED", "")
    if flag == "0":
        return None
    present = [v for v in EXPLICIT_VARS if env.get(v)]
    if len(present) == len(EXPLICIT_VARS):
        return "explicit"
    if present and "JAX_COORDINATOR_ADDRESS" not in present:
        missing = sorted(set(EXPLICIT_VARS) - set(present))
        raise ValueError(f"multi-process set-up: {', '.join(present)} set but {', '.join(missing)} missing")
    if flag == "1":
        return "auto"
    tasks = env.get("SLURM_NTASKS") or env.get("SLURM_NPROCS")
    if env.get("SLURM_JOB_ID") and tasks and int(tasks) > 1:
        return "auto"
    return None


def slurm_local_device_ids(env: dict[str, str]) -> list[int] | None:
    """The GPUs (indices among the visible ones) this SLURM task drives, or None (jax's default).

    jax's SLURM detection gives every task only the GPU numbered by its SLURM_LOCALID: right
    for one task per GPU, but with one task per node (launch/gpu_multinode.sbatch) each
    process would drive one of the node's GPUs and leave the rest idle, and where SLURM binds
    one GPU to each task (`--gpus-per-task=1`) LOCALID is no index among the visible ones.
    Here the node's visible GPUs are shared out evenly: tasks on the node T, visible GPUs G;
    G >= T and T | G: task k takes `[k G/T, (k+1) G/T)`; one visible GPU: that one.
    JAX_LOCAL_DEVICE_IDS, where set, is jax's to read; outside SLURM (or without GPUs
    known) None.
    """
    if "SLURM_LOCALID" not in env or env.get("JAX_LOCAL_DEVICE_IDS"):
        return None
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible:
        gpus = len([g for g in visible.split(",") if g.strip()])
    elif env.get("SLURM_GPUS_ON_NODE", "").isdigit():
        gpus = int(env["SLURM_GPUS_ON_NODE"])
    else:
        return None
    tasks = _slurm_tasks_on_node(env)
    local = int(env["SLURM_LOCALID"])
    if gpus == 1:
        return [0]
    if tasks is None or tasks > gpus or gpus % tasks:
        return None
    share = gpus // tasks
    return list(range(local * share, (local + 1) * share))


def _slurm_tasks_on_node(env: dict[str, str]) -> int | None:
    """Tasks on this node: SLURM_NTASKS_PER_NODE, else this node's entry of SLURM_TASKS_PER_NODE
    (`2(x3),1`: 2 on each of the first three nodes, 1 on the fourth)."""
    if env.get("SLURM_NTASKS_PER_NODE", "").isdigit():
        return int(env["SLURM_NTASKS_PER_NODE"])
    spec, node = env.get("SLURM_TASKS_PER_NODE", ""), int(env.get("SLURM_NODEID", "0") or 0)
    counts = []
    for part in filter(None, spec.split(",")):
        count, _, repeat = part.partition("(x")
        if not count.isdigit():
            return None
        counts += [int(count)] * (int(repeat.rstrip(")")) if repeat else 1)
    return counts[node] if node < len(counts) else None


def initialize(env: dict[str, str] | None = None) -> bool:
    """Start `jax.distributed` if the environment asks for several processes.

    Must run before anything touches a JAX backend; calling it again is harmless.
    Returns True when this process is part of a multi-process job.
    """
    if jax.distributed.is_initialized():
        return True
    mode = wanted(env)
    if mode is None:
        return False
    env = os.environ if env is None else env
    if mode == "explicit":
        jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(env["JAX_NUM_PROCESSES"]),
                                   process_id=int(env["JAX_PROCESS_ID"]))
    else:  # SLURM, Cloud TPU, Kubernetes, Open MPI: detected by jax
        ids = slurm_local_device_ids(env)
        if ids is not None:
            log.info("SLURM task %s: GPUs %s of the %s visible on its node", env.get("SLURM_LOCALID"),
                     ids, env.get("CUDA_VISIBLE_DEVICES") or env.get("SLURM_GPUS_ON_NODE"))
        jax.distributed.initialize(local_device_ids=ids)
    log.info("jax.distributed: process %d of %d (%s)", jax.process_index(), jax.process_count(), mode)
    if jax.default_backend() == "cpu" and jax.local_device_count() > 1:
        log.warning("%d CPU devices in each process: XLA's CPU collectives (gloo) can deadlock with "
                    "several devices per process in long runs; run one device per process on CPU",
                    jax.local_device_count())
    return True


def log_topology(mesh: Any) -> None:
    """Log this process, its devices and the mesh (device ids laid out on the mesh axes)."""
    local = jax.local_devices()
    log.info("process %d/%d on %s: %d local of %d devices (%s, %s)", jax.process_index(),
             jax.process_count(), os.uname().nodename, len(local), jax.device_count(),
             local[0].platform, local[0].device_kind)
    ids = np.vectorize(lambda d: d.id)(mesh.devices)
    log.info("mesh %s, device ids:\n%s", dict(mesh.shape), ids)


def log_data_shard(host_batch: dict, global_batch: dict) -> None:
    """Log which rows of the global batch this process feeds, and their shapes."""
    name, arr = next(iter(global_batch.items()))
    rows = sorted({(idx[0].start or 0, idx[0].stop or arr.shape[0])
                   for idx in arr.sharding.addressable_devices_indices_map(arr.shape).values()})
    log.info("process %d feeds rows %s of the global batch %s (local %s: %s)", jax.process_index(),
             rows, {k: tuple(v.shape) for k, v in global_batch.items()}, name,
             tuple(np.shape(host_batch[name])))
