"""Two processes x 4 CPU devices on loopback train like one process with 8 devices.

Each process is started the way the launchers start them: JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID in the environment, `trainer.run` joins them.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from auvmae_jax import distributed, finetune, input_pipeline
from tests.conftest import free_port, mini_finetune_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# argv: data_dir workdir out_dir steps [replay.npz] [sigterm_step]. Runs the real
# pre-training task through trainer.run. With replay, the data are the global batches
# a 2-process run recorded (so a 1-process run sees the same clips in the same order).
SCRIPT = r"""
import json, os, signal, sys, time
import numpy as np
data_dir, workdir, out_dir, steps = sys.argv[1:5]
replay = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] != "-" else None
sigterm_step = int(sys.argv[6]) if len(sys.argv) > 6 else 0
import jax
from jax.experimental import multihost_utils
from auvmae_jax import pretrain, sharding, trainer
from auvmae_jax.errors import Preempted
from tests.conftest import mini_pretrain_config

config = mini_pretrain_config(data_dir)
config.mesh = {"data": 4, "fsdp": 2}
config.num_train_steps = int(steps)
config.checkpoint_every = 100
recorded = []

class Recording:
    def __init__(self, ds): self.ds = ds
    def __iter__(self):
        self.it = iter(self.ds)
        return self
    def __next__(self):
        recorded.append(next(self.it))
        return recorded[-1]
    def get_state(self): return self.it.get_state()
    def set_state(self, state): self.it.set_state(state)

class Replay:
    def __init__(self, path):
        f = np.load(path)
        steps = sorted({k.split("/")[0] for k in f.files})
        self.batches = [{k.split("/")[1]: f[k] for k in f.files if k.startswith(s + "/")} for s in steps]
        self.i = 0
    def __iter__(self): return self
    def __next__(self):
        self.i += 1
        return self.batches[self.i - 1]
    def get_state(self): return {"i": self.i}
    def set_state(self, state): self.i = state["i"]

def make_task(workdir):
    task = pretrain.make_task(config, workdir)
    task.train_data = Replay(replay) if replay else Recording(task.train_data)
    task.evaluate = None  # reconstruction pictures: not what this test is about
    return task

def hook(step, state):
    if step == sigterm_step and jax.process_index() == 1:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(3)  # the processes agree on a stop step in the background

try:
    state, history = trainer.run(config, workdir, make_task, hooks=(hook,))
except Preempted as stopped:  # saved; the relaunch continues
    state, history = stopped.state, stopped.history
pid = jax.process_index()
out = {"process": pid, "processes": jax.process_count(), "devices": jax.device_count(),
       "local_devices": jax.local_device_count(), "steps": [h["step"] for h in history],
       "losses": [h["loss"] for h in history], "final_step": int(state.step)}
params = multihost_utils.process_allgather(state.params, tiled=True)
flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}
if not replay:
    mesh = sharding.make_mesh(config.mesh)
    spec = sharding.batch_sharding(mesh, sharding.rules_from_config(config.logical_axis_rules))
    glob, steps = {}, [h["step"] for h in history]
    for step, host in zip(steps, recorded):
        g = multihost_utils.process_allgather(sharding.host_batch_to_global(host, spec), tiled=True)
        glob.update({f"{step:03d}/{k}": np.asarray(v) for k, v in g.items()})  # frames, crop boxes
    np.savez(os.path.join(out_dir, f"local_{pid}.npz"),
             **{f"{step:03d}/{k}": np.asarray(v) for step, b in zip(steps, recorded) for k, v in b.items()})
    if pid == 0:
        np.savez(os.path.join(out_dir, "global.npz"), **glob)
if pid == 0:
    np.savez(os.path.join(out_dir, "params.npz"), **flat)
print("RESULT " + json.dumps(out), flush=True)
"""


def _launch(args: list[str], processes: int, devices: int, out_dir, script: str = SCRIPT) -> list[dict]:
    os.makedirs(out_dir, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_"))}
    base.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    port = free_port()
    procs = []
    for i in range(processes):
        env = dict(base)
        if processes > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                       JAX_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, "-c", script, *args[:2], str(out_dir), *args[2:]],
                                      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    results = []
    start = time.perf_counter()
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, stderr[-3000:]
        line = [x for x in stdout.splitlines() if x.startswith("RESULT ")][-1]
        results.append(json.loads(line[len("RESULT "):]))
    print(f"{processes} x {devices} devices: {time.perf_counter() - start:.1f} s")
    return results


# argv: data_dir root out_dir. Pre-trains, fine-tunes from it (init_from) and evaluates, with the
# weights sharded over every device of the job (fsdp): each process then holds only part of them.
FINETUNE_SCRIPT = r"""
import json, sys
import jax
from auvmae_jax import evaluation, finetune, input_pipeline, pretrain
from tests.conftest import mini_finetune_config, mini_pretrain_config


def clip_labels(config):  # the training split's labels as gathered: each process reads its share
    builder = input_pipeline.load_builder(config.data)
    return finetune.clip_labels(input_pipeline.data_source(builder, finetune.splits(config, builder)[0]))


data_dir, root = sys.argv[1], sys.argv[2]
pre = mini_pretrain_config(data_dir)
pre.num_train_steps, pre.mesh = 2, {"data": 1, "fsdp": 2}
pretrain.train(pre, root + "/pre")
ft = mini_finetune_config(data_dir)
ft.init_from, ft.num_train_steps, ft.mesh = root + "/pre", 2, {"data": 1, "fsdp": 2}
ft.eval_every = 1  # the periodic evaluation inside the training loop too
_, history = finetune.train(ft, root + "/ft")
result = evaluation.evaluate_workdir(root + "/ft")
print("RESULT " + json.dumps({"process": jax.process_index(), "losses": [h["loss"] for h in history],
                              "f1": result["f1"], "num_frames": result["num_frames"],
                              "labels": clip_labels(ft).tolist()}), flush=True)
"""


def test_two_processes_fine_tune_from_sharded_weights_and_score_the_whole_split(synthetic_data_dir, tmp_path):
    two = _launch([synthetic_data_dir, str(tmp_path / "run")], 2, 1, tmp_path / "out", FINETUNE_SCRIPT)
    # (The logged losses are replicated metrics, the same in every process by construction: what each
    # process read is checked below, by the labels gathered and the priors.)
    assert len(two[0]["losses"]) == 2 and np.isfinite(two[0]["losses"]).all()
    # Each process predicts its own clips; the scores count all of them, the same on both.
    assert two[0]["f1"] == two[1]["f1"] and two[0]["num_frames"] == two[1]["num_frames"]
    # The priors: each process read half the training clips; the labels gathered are all of them, in
    # order, as one process reads them, and the saved priors are one process's.
    config = mini_finetune_config(synthetic_data_dir)
    builder = input_pipeline.load_builder(config.data)
    source = input_pipeline.data_source(builder, finetune.splits(config, builder)[0])
    labels = finetune.clip_labels(source)
    assert labels.shape[:2] == (len(source), 2) and len(source) > 2 and labels[:, 0].any()
    for result in two:
        np.testing.assert_array_equal(result["labels"], labels)
    one = finetune.training_priors(source, finetune.aus_of(builder), str(tmp_path / "one"))
    for name in ("class_weights", "intra_prior", "inter_prior"):
        np.testing.assert_array_equal(np.load(tmp_path / "run" / "ft" / "priors" / f"{name}.npy"), one[name])
    # One process with both devices scores the same checkpoint alike.
    code = ("import json, sys; from auvmae_jax import evaluation\n"
            "print('RESULT ' + json.dumps(evaluation.evaluate_workdir(sys.argv[1])))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_"))}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run" / "ft")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])
    assert one["num_frames"] == two[0]["num_frames"] > 0
    assert one["f1"] == pytest.approx(two[0]["f1"])


def test_environment_decides_how_to_join():
    assert distributed.wanted({}) is None
    assert distributed.wanted({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2",
                               "JAX_PROCESS_ID": "1"}) == "explicit"
    assert distributed.wanted({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}) == "auto"
    assert distributed.wanted({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert distributed.wanted({"AUVMAE_DISTRIBUTED": "1"}) == "auto"
    assert distributed.wanted({"AUVMAE_DISTRIBUTED": "0", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) is None
    with pytest.raises(ValueError, match="JAX_PROCESS_ID set but JAX_COORDINATOR_ADDRESS missing"):
        distributed.wanted({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"})


def test_slurm_tasks_share_out_their_nodes_gpus():
    f = distributed.slurm_local_device_ids
    eight = "0,1,2,3,4,5,6,7"
    # One task per node (gpu_multinode.sbatch): all 8 GPUs, where jax alone would give it GPU 0 only.
    assert f({"SLURM_LOCALID": "0", "SLURM_TASKS_PER_NODE": "1(x2)", "CUDA_VISIBLE_DEVICES": eight}) == \
        list(range(8))
    # One task per GPU, all GPUs visible to each: the LOCALID-th (jax's own choice).
    assert f({"SLURM_LOCALID": "3", "SLURM_NTASKS_PER_NODE": "8", "CUDA_VISIBLE_DEVICES": eight}) == [3]
    # --gpus-per-task=1: SLURM shows each task its own GPU alone, as device 0.
    assert f({"SLURM_LOCALID": "3", "SLURM_TASKS_PER_NODE": "8(x2)", "CUDA_VISIBLE_DEVICES": "5"}) == [0]
    # Two tasks on the second node of `4(x1),2` with 8 GPUs from GRES: four each.
    assert f({"SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_TASKS_PER_NODE": "4,2",
              "SLURM_GPUS_ON_NODE": "8"}) == [4, 5, 6, 7]
    # jax's default where nothing says how many GPUs, they do not share out, the user chose, or no SLURM.
    assert f({"SLURM_LOCALID": "0", "SLURM_TASKS_PER_NODE": "2"}) is None
    assert f({"SLURM_LOCALID": "0", "SLURM_TASKS_PER_NODE": "3", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}) is None
    assert f({"SLURM_LOCALID": "0", "SLURM_TASKS_PER_NODE": "1", "CUDA_VISIBLE_DEVICES": eight,
              "JAX_LOCAL_DEVICE_IDS": "0"}) is None
    assert f({"CUDA_VISIBLE_DEVICES": eight}) is None


def test_xla_gpu_flags_are_defaults_only():
    def flags(given):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        if given is not None:
            env["XLA_FLAGS"] = given
        twice = "set -u; source launch/xla_gpu_flags.sh; source launch/xla_gpu_flags.sh; echo \"$XLA_FLAGS\""
        out = subprocess.run(["bash", "-c", twice], cwd=ROOT, env=env, capture_output=True, text=True)
        return out.stdout.strip()

    assert flags(None) == "--xla_gpu_enable_latency_hiding_scheduler=true"  # once, though sourced twice
    assert flags("--xla_dump_to=d") == "--xla_dump_to=d --xla_gpu_enable_latency_hiding_scheduler=true"
    assert flags("--xla_gpu_enable_latency_hiding_scheduler=false") == \
        "--xla_gpu_enable_latency_hiding_scheduler=false"  # the user's value stands


def test_sbatch_requeues_a_preempted_job_and_passes_the_cpus(tmp_path):
    # Stand-in srun (exits with FAKE_RC, records its arguments) and scontrol (records them).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = {"srun": 'echo "$*" >> "$CALLS"; exit "$FAKE_RC"', "scontrol": 'echo "scontrol $*" >> "$CALLS"'}
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)

    def submit(rc, where=ROOT):
        calls = tmp_path / "calls"
        calls.unlink(missing_ok=True)
        env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_RC=str(rc),
                   CALLS=str(calls), SLURM_JOB_ID="42", SLURM_CPUS_PER_TASK="32", SLURM_SUBMIT_DIR=str(where))
        env.pop("AUVMAE_ROOT", None)
        script = os.path.join(ROOT, "launch", "gpu_multinode.sbatch")
        out = subprocess.run(["bash", script, "pretrain", "--x=1"], env=env, capture_output=True, text=True,
                             timeout=60)
        return out.returncode, calls.read_text().splitlines() if calls.exists() else [], out.stderr

    assert submit(75)[:2] == (75, ["--kill-on-bad-exit=1 --cpus-per-task=32 auvmae pretrain --x=1",
                                   "scontrol requeue 42"])
    assert submit(0)[:2] == (0, ["--kill-on-bad-exit=1 --cpus-per-task=32 auvmae pretrain --x=1"])
    assert submit(1)[:2] == (1, ["--kill-on-bad-exit=1 --cpus-per-task=32 auvmae pretrain --x=1"])
    rc, calls, err = submit(0, where=tmp_path)  # submitted from elsewhere: one clear line
    assert rc == 2 and calls == [] and "is not the auvmae-jax checkout" in err


def test_two_processes_survive_preemption_and_agree_with_one(synthetic_data_dir, tmp_path):
    work, steps = str(tmp_path / "two"), "5"
    # SIGTERM to process 1 after step 2: both processes agree on a step, save and stop.
    stopped = _launch([synthetic_data_dir, work, steps, "-", "2"], 2, 4, tmp_path / "out_a")
    assert [(r["process"], r["processes"], r["devices"], r["local_devices"]) for r in stopped] == \
        [(0, 2, 8, 4), (1, 2, 8, 4)]
    stop = stopped[0]["final_step"]
    assert stopped[1]["final_step"] == stop and 2 <= stop < 5, stopped
    saved = os.listdir(os.path.join(work, "checkpoints", str(stop), "data"))
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(saved)  # each process's data position
    # Relaunched, they continue from that checkpoint to the end.
    resumed = _launch([synthetic_data_dir, work, steps], 2, 4, tmp_path / "out_b")
    assert resumed[0]["steps"] == resumed[1]["steps"] == list(range(stop + 1, 6))
    # Each process read its own records; the global batch is process 0's rows, then process 1's.
    glob = {}
    for run in ("out_a", "out_b"):
        local = [np.load(tmp_path / run / f"local_{i}.npz") for i in (0, 1)]
        glob.update(np.load(tmp_path / run / "global.npz"))
        for k in local[0].files:
            assert local[0][k].shape[0] == local[1][k].shape[0] == 4
            np.testing.assert_array_equal(glob[k], np.concatenate([local[0][k], local[1][k]]))
            if k.endswith("/frames"):
                assert not {c.tobytes() for c in local[0][k]} & {c.tobytes() for c in local[1][k]}
    assert sorted(glob) == [f"{s:03d}/{k}" for s in range(1, 6) for k in ("crop", "frames")]
    np.savez(tmp_path / "global.npz", **glob)

    # One process with 8 devices, fed the same global batches, computes the same run.
    one = _launch([synthetic_data_dir, str(tmp_path / "one"), steps, str(tmp_path / "global.npz")],
                  1, 8, tmp_path / "out_one")
    assert one[0]["processes"] == 1 and one[0]["devices"] == 8
    np.testing.assert_allclose(one[0]["losses"], stopped[0]["losses"] + resumed[0]["losses"], rtol=1e-5)
    p1, p2 = np.load(tmp_path / "out_one" / "params.npz"), np.load(tmp_path / "out_b" / "params.npz")
    assert p1.files == p2.files and len(p1.files) > 20
    for k in p1.files:
        np.testing.assert_allclose(p1[k], p2[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_gpu_node_launcher_starts_a_two_process_run(synthetic_data_dir, tmp_path):
    """`launch/gpu_node.sh` as its header says to run it, once per "node" (2 processes x 1 CPU
    device on loopback; its GPU XLA flags are accepted on CPU): they join and train together."""
    from tests.conftest import TINY_SYNTHETIC

    work = tmp_path / "run"
    overrides = [f"--config.data.synthetic.{k}={v}" for k, v in TINY_SYNTHETIC.items()] + [
        f"--config.data.data_dir={synthetic_data_dir}", "--config.data.num_frames=4",
        "--config.data.image_size=32", "--config.model.patch_size=8", "--config.model.dtype=float32",
        "--config.mask_ratio=0.75", "--config.batch_size=8", "--config.num_train_steps=4",
        "--config.checkpoint_every=2", "--config.log_every=1", "--config.eval_every=1000",
        "--config.prefetch_to_device=1"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_"))}
    base.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
                COORDINATOR=f"127.0.0.1:{free_port()}", NUM_NODES="2",
                PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    procs = [subprocess.Popen(["bash", "launch/gpu_node.sh", "pretrain", "--config=configs/pretrain.py:mini",
                               f"--workdir={work}", *overrides], env=dict(base, NODE_RANK=str(rank)),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    for rank, (_, err) in enumerate(outputs):
        assert f"jax.distributed: process {rank} of 2" in err, err[-3000:]
        assert f"process {rank}/2" in err and "1 local of 2 devices" in err
    assert sorted(os.listdir(work / "checkpoints")) == ["2", "4"]
