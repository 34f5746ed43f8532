"""`gs://` data dirs and workdirs, against a local GCS emulator (tests/gcs_emulator.py).

ArrayRecord reads `gs://` files but writes only local ones: builds into a bucket are
staged on local disk and uploaded (`data_builders.staging`), and the training
pipeline reads the clips back from the bucket. Training writes its whole workdir
(orbax checkpoints through TensorStore, TensorBoard events through tensorboardX,
config, pictures, priors, metrics through etils.epath) into a bucket and resumes
from it.
"""

import json
import os
import subprocess
import sys

import numpy as np

from tests import gcs_emulator
from tests.conftest import TINY_SYNTHETIC, free_port

BUILD_SCRIPT = r"""
import json, os, sys
import numpy as np
import data_builders
from auvmae_jax import data_mixture, input_pipeline
from etils import epath

synthetic, local_dir = json.loads(sys.argv[1]), sys.argv[2]
remote = data_builders.build_synthetic("gs://bucket/tfds", **synthetic)
local = data_builders.build_synthetic(local_dir, **synthetic)
files = sorted(p.name for p in epath.Path(str(remote.data_dir)).iterdir())
again = data_builders.build_synthetic("gs://bucket/tfds", **synthetic)  # prepared: read, not rebuilt
same = []
for split in ("part1", "part3"):
    a, b = input_pipeline.data_source(again, split), input_pipeline.data_source(local, split)
    same += [len(a) == len(b)] + [bool(np.array_equal(a[i]["frames"], b[i]["frames"])
                                       and np.array_equal(a[i]["labels"], b[i]["labels"]))
                                  for i in range(len(b))]
sampler = input_pipeline.ClipSampler(num_frames=4, temporal_stride=1, image_size=32, train=True,
                                     with_labels=True)
batch = next(iter(input_pipeline.make_dataset(input_pipeline.data_source(again, "part2"), sampler,
                                              batch_size=4, seed=0)))
# `builder/config` names and mixtures of builds in the bucket (data.name, data.mixture)
name = str(again.data_dir)[len("gs://bucket/tfds/"):].rsplit("/", 1)[0]
by_name = data_mixture.built_builder(name, "gs://bucket/tfds")
by_builder = data_mixture.built_builder("synthetic_faces", "gs://bucket/tfds")  # its one build
mixture = data_mixture.load_mixture(f"{name}:3,{name}:1", "gs://bucket/tfds", split="part1")
print("RESULT " + json.dumps({"data_dir": str(again.data_dir), "files": files, "same": same,
                              "batch": list(batch["frames"].shape),
                              "found": [str(by_name.data_dir), str(by_builder.data_dir)],
                              "mixture": [len(mixture), 2 * len(input_pipeline.data_source(again, "part1"))],
                              }))
"""


# Prefix of scripts that read TensorBoard event files: (step, tag) of every summary value.
READ_EVENTS = r"""
import struct
from tensorboardX.proto import event_pb2


def read_events(path):
    data, at, out = path.read_bytes(), 0, []
    while at < len(data):  # TFRecord framing: length, crc, event, crc
        (n,) = struct.unpack("<Q", data[at:at + 8])
        event = event_pb2.Event.FromString(data[at + 12:at + 12 + n])
        at += n + 16
        out += [(event.step, v.tag) for v in event.summary.value]
    return out
"""

WORKDIR_SCRIPT = READ_EVENTS + r"""
import json, sys
import numpy as np
import transformers
import data_builders
from etils import epath
from auvmae_jax import convert, evaluation, features, figures, finetune, paths, predict, pretrain, video_io
from tests.conftest import TINY_SYNTHETIC, mini_finetune_config, mini_pretrain_config

data_dir, local = sys.argv[1], sys.argv[2]
data_builders.build_synthetic(data_dir, **TINY_SYNTHETIC)
config = mini_pretrain_config(data_dir)  # 6 steps, a checkpoint every 2
config.eval_every = 3
_, full = pretrain.train(config, local)  # uninterrupted, on local disk


class Interrupt(Exception):
    pass


def kill(step, state):
    if step == 3:
        raise Interrupt


try:
    pretrain.train(config, "gs://bucket/pre", hooks=(kill,))  # dies after step 3; saved: step 2
except Interrupt:
    pass
_, resumed = pretrain.train(config, "gs://bucket/pre")
root = epath.Path("gs://bucket/pre")
events = {}
for path in (root / "tensorboard").iterdir():
    for step, tag in read_events(path):
        events.setdefault(tag, []).append(step)

ft = mini_finetune_config(data_dir)
ft.init_from = "gs://bucket/pre"
ft.num_train_steps = 2
finetune.train(ft, "gs://bucket/ft")
metrics = evaluation.evaluate_workdir("gs://bucket/ft")
saved = json.loads((epath.Path("gs://bucket/ft") / "metrics.json").read_text())
figures.priors_report(ft, "gs://bucket/ft", pair=(6, 12))  # `auvmae priors --workdir=gs://...`

# Inference from checkpoints in the bucket, outputs into it; a converted model written there.
video = local + "_clip.mp4"
video_io.write_video(video, np.random.default_rng(0).integers(0, 255, (12, 32, 32, 3), np.uint8))
summary = predict.predict_video(features.load_checkpoint("gs://bucket/ft"), video, "gs://bucket/out/aus.csv",
                                plot="gs://bucket/out/aus.png", detect=False, progress=False)
rows = epath.Path("gs://bucket/out/aus.csv").read_text().splitlines()
feats = features.extract_features(features.load_checkpoint("gs://bucket/pre"), video, "gs://bucket/out/f.npy",
                                  pool="clip", detect=False, progress=False)
stored = paths.load_npy("gs://bucket/out/f.npy")
hf = transformers.VideoMAEModel(transformers.VideoMAEConfig(
    image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32, num_hidden_layers=2,
    num_attention_heads=2, intermediate_size=128))
hf.save_pretrained(local + "_hf")
convert.convert(local + "_hf", "gs://bucket/converted")
converted = features.load_checkpoint("gs://bucket/converted")
print("RESULT " + json.dumps({
    "full": [h["loss"] for h in full], "resumed": [h["step"] for h in resumed],
    "resumed_loss": [h["loss"] for h in resumed],
    "pre": sorted(p.name for p in root.iterdir()),
    "checkpoints": sorted(p.name for p in (root / "checkpoints").iterdir()),
    "pictures": sorted(p.name for p in (root / "reconstructions").iterdir()),
    "loss_steps": sorted(events.get("loss", [])),
    "ft": sorted(p.name for p in epath.Path("gs://bucket/ft").iterdir()),
    "priors": sorted(p.name for p in epath.Path("gs://bucket/ft/priors").iterdir()),
    "metrics_equal": saved == metrics, "csv_rows": len(rows), "csv_header": rows[0].split(",")[:3],
    "predicted_frames": summary["frames"], "out": sorted(p.name for p in epath.Path("gs://bucket/out").iterdir()),
    "features_equal": bool(np.array_equal(stored, feats)), "features_shape": list(stored.shape),
    "converted": [converted.task, converted.vit.width, converted.window]}))
"""


def _run(script: str, args: list[str], env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=gcs_emulator.ROOT, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])


def test_build_into_a_bucket_is_staged_uploaded_and_read_back(tmp_path):
    with gcs_emulator.running(tmp_path) as env:
        out = _run(BUILD_SCRIPT, [json.dumps(TINY_SYNTHETIC), str(tmp_path / "local")], env)
    assert out["data_dir"].startswith("gs://bucket/tfds/synthetic_faces/")
    assert "dataset_info.json" in out["files"]
    assert "synthetic_faces-part1.array_record-00000-of-00001" in out["files"]
    assert len(out["same"]) > 4 and all(out["same"])  # every clip of two splits, byte for byte
    assert out["batch"] == [4, 4, 32, 32, 3]
    assert out["found"] == [out["data_dir"]] * 2
    assert out["mixture"][0] == out["mixture"][1]  # two sources' worth of records, from the bucket
    assert os.listdir(tmp_path) == ["local"]  # the staging folder is gone


TENSORBOARD_SCRIPT = READ_EVENTS + r"""
import json, sys
import numpy as np
from etils import epath
from auvmae_jax import metric_writers

metric_writers.TensorBoardWriter.ROTATE_SCALARS = 4
out = {}
for logdir in ("gs://bucket/tb", sys.argv[1]):
    writer = metric_writers.TensorBoardWriter(logdir)
    for step in (1, 2, 3, 4, 5):
        writer.write_scalars(step, {"loss": 1.0 / step, "lr": 0.1})
        if step == 3:
            writer.write_images(step, {"recon": np.zeros((8, 8, 3), np.uint8)})
    writer.close()
    files = sorted(epath.Path(logdir).iterdir())  # TensorBoard's reading order
    out[logdir] = [sorted({f"{tag}@{step}" for step, tag in read_events(f)}) for f in files]
print("RESULT " + json.dumps(out))
"""


def test_tensorboard_events_in_a_bucket_go_to_a_new_file_after_images_and_many_scalars(tmp_path):
    # tensorboardX re-uploads a whole gs:// event file at every flush: files are kept small.
    with gcs_emulator.running(tmp_path / "staging") as env:
        out = _run(TENSORBOARD_SCRIPT, [str(tmp_path / "local")], env)
    assert out["gs://bucket/tb"] == [
        ["loss@1", "loss@2", "lr@1", "lr@2"],  # 4 scalars: a new file
        ["loss@3", "lr@3", "recon@3"],  # images: a new file
        ["loss@4", "loss@5", "lr@4", "lr@5"],
        [],  # opened after step 5's scalars, closed empty
    ]
    assert out[str(tmp_path / "local")] == [  # on local disk tensorboardX appends: one file
        [f"{tag}@{s}" for tag in ("loss", "lr") for s in range(1, 6)] + ["recon@3"]]


def test_training_writes_its_workdir_into_a_bucket_and_resumes_from_it(tmp_path):
    with gcs_emulator.running(tmp_path / "staging") as env:
        out = _run(WORKDIR_SCRIPT, [str(tmp_path / "tfds"), str(tmp_path / "local")], env)
    # Killed after step 3, resumed from the step-2 checkpoint in the bucket: the same losses as
    # the uninterrupted local run (parameters, optimizer state and data position restored).
    assert out["resumed"] == [3, 4, 5, 6]
    np.testing.assert_allclose(out["resumed_loss"], out["full"][2:], rtol=1e-6)
    assert {"checkpoints", "config.json", "reconstructions", "tensorboard"} <= set(out["pre"])
    assert out["checkpoints"] == ["2", "4", "6"]
    assert out["pictures"] == ["step_0000003.png", "step_0000006.png"]
    # Both runs' TensorBoard events are in the bucket: steps 1-3, then 3-6 again after resuming.
    assert out["loss_steps"] == [1, 2, 3, 3, 4, 5, 6]
    # Fine-tuning from the bucket's encoder, into the bucket; its evaluation reads and writes there.
    ft_files = {"checkpoints", "config.json", "metrics.json", "metrics.md", "priors", "tensorboard"}
    assert ft_files <= set(out["ft"])
    assert {"intra_prior.npy", "learned_intra.npy", "intra.png", "inter_AU6_AU12.png"} <= set(out["priors"])
    assert out["metrics_equal"]
    # `predict` and `features` read their checkpoints from the bucket and write their files there.
    assert out["predicted_frames"] == 12 and out["csv_rows"] == 13  # a header, then one row per frame
    assert out["csv_header"] == ["frame", "timestamp", "success"]
    assert out["out"] == ["aus.csv", "aus.png", "f.npy", "f_clips.csv", "f_frames.csv"]
    assert out["features_equal"] and out["features_shape"][1] == 32  # one mini feature row per clip
    assert out["converted"] == ["converted", 32, 4]  # `auvmae convert --output=gs://...`, read back


# `gcloud compute tpus tpu-vm ssh TPU --worker=all --command=CMD` on this machine: CMD runs once
# per "worker", each in its own home folder, told how to join the others as a TPU VM's metadata
# tells jax; `gcloud compute tpus tpu-vm scp FILE TPU:NAME --worker=all` copies FILE into each home.
FAKE_GCLOUD = r"""#!/usr/bin/env bash
set -uo pipefail
case "$1 $2 $3 $4" in
  "compute tpus tpu-vm scp")
    for i in $(seq 0 $((FAKE_WORKERS - 1))); do cp "$5" "$FAKE_HOMES/worker$i/${6#*:}" || exit 1; done
    exit 0;;
  "compute tpus tpu-vm ssh") ;;
  *) echo "fake gcloud: only tpu-vm ssh and scp: $*" >&2; exit 2;;
esac
for a in "$@"; do
  case "$a" in --command=*) cmd="${a#--command=}";; --worker=*) [ "$a" = --worker=all ] || exit 2;; esac
done
pids=()
for i in $(seq 0 $((FAKE_WORKERS - 1))); do
  HOME="$FAKE_HOMES/worker$i" JAX_COORDINATOR_ADDRESS="$FAKE_COORDINATOR" JAX_NUM_PROCESSES="$FAKE_WORKERS" \
    JAX_PROCESS_ID="$i" bash -c "$cmd" >> "$FAKE_HOMES/worker$i.out" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
exit $rc
"""
# The install step on the stand-in workers (the real one makes a venv with uv and its own Python
# and installs jax[tpu] and the rest): a venv over this machine's packages, the copied checkout
# put on its path (a .pth file: seconds, where a pip build of it takes half a minute).
FAKE_INSTALL = ("python3 -m venv --without-pip --system-site-packages ~/auvmae-venv && "
                "echo \"$PWD\" > \"$(~/auvmae-venv/bin/python -c "
                "'import sysconfig; print(sysconfig.get_path(\"purelib\"))')/auvmae.pth\"")


def _pod_run(env: dict, steps: int, data_dir: str) -> subprocess.CompletedProcess:
    overrides = [f"--config.data.synthetic.{k}={v}" for k, v in TINY_SYNTHETIC.items()] + [
        f"--config.data.data_dir={data_dir}", "--config.data.num_frames=4", "--config.data.image_size=32",
        "--config.model.patch_size=8", "--config.model.dtype=float32", "--config.mask_ratio=0.75",
        "--config.batch_size=8", f"--config.num_train_steps={steps}", "--config.checkpoint_every=2",
        "--config.log_every=1", "--config.eval_every=1000", "--config.prefetch_to_device=1"]
    env = dict(env, FAKE_COORDINATOR=f"127.0.0.1:{free_port()}")
    return subprocess.run(["bash", "launch/tpu_pod.sh", "pretrain", "--config=configs/pretrain.py:mini",
                           "--workdir=gs://bucket/pod", *overrides], cwd=gcs_emulator.ROOT, env=env,
                          capture_output=True, text=True, timeout=400)


def test_tpu_pod_launcher_trains_two_workers_into_a_bucket_and_resumes(tmp_path):
    """`launch/tpu_pod.sh` on two stand-in workers of one CPU device each: the committed checkout
    copied and installed on each, data and workdir in the emulator's bucket, as on a pod; then
    the same line again (SETUP=0: installed already) resumes from the bucket."""
    bin_dir, homes = tmp_path / "bin", tmp_path / "homes"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    for i in (0, 1):
        (homes / f"worker{i}").mkdir(parents=True)
    with gcs_emulator.running(tmp_path / "staging") as env:
        env = {k: v for k, v in env.items() if not k.startswith(("JAX_", "SLURM_"))}
        env.update(TPU="test-pod", ZONE="test-zone", INSTALL=FAKE_INSTALL, FAKE_WORKERS="2",
                   FAKE_HOMES=str(homes), XLA_FLAGS="--xla_force_host_platform_device_count=1",
                   PATH=os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable), env["PATH"]]))
        _run("import json, sys, data_builders\n"
             "data_builders.build_synthetic('gs://bucket/tfds', **json.loads(sys.argv[1]))\n"
             "print('RESULT {}')", [json.dumps(TINY_SYNTHETIC)], env)
        first = _pod_run(env, 4, "gs://bucket/tfds")
        logs = [(homes / f"worker{i}.out").read_text() for i in (0, 1)]
        assert first.returncode == 0, first.stderr[-2000:] + logs[0][-2000:] + logs[1][-2000:]
        # Each worker holds HEAD's files as ~/auvmae, installed into its own ~/auvmae-venv.
        committed = subprocess.run(["git", "ls-files"], cwd=gcs_emulator.ROOT, capture_output=True,
                                   text=True, check=True).stdout.split()
        for i in (0, 1):
            copied = {str(p.relative_to(homes / f"worker{i}" / "auvmae"))
                      for p in (homes / f"worker{i}" / "auvmae").rglob("*") if p.is_file()}
            assert {"launch/tpu_pod.sh", "auvmae_jax/trainer.py", "setup.py"} <= copied
            assert {f for f in copied if "__pycache__" not in f} <= set(committed)
            where = subprocess.run([str(homes / f"worker{i}" / "auvmae-venv" / "bin" / "python"), "-c",
                                    "import auvmae_jax; print(auvmae_jax.__file__)"], cwd="/",
                                   capture_output=True, text=True, timeout=60)
            assert where.stdout.strip() == str(homes / f"worker{i}" / "auvmae" / "auvmae_jax" / "__init__.py")
        env["SETUP"] = "0"
        second = _pod_run(env, 6, "gs://bucket/tfds")  # the same line, more steps: resumes at 4
        logs2 = [(homes / f"worker{i}.out").read_text() for i in (0, 1)]
        assert second.returncode == 0, second.stderr[-2000:] + logs2[0][-2000:] + logs2[1][-2000:]
        out = _run(r"""
import json
from etils import epath
root = epath.Path("gs://bucket/pod")
print("RESULT " + json.dumps({"top": sorted(p.name for p in root.iterdir()),
    "checkpoints": sorted(p.name for p in (root / "checkpoints").iterdir()),
    "data": sorted(p.name for p in (root / "checkpoints" / "6" / "data").iterdir())}))
""", [], env)
    for rank in (0, 1):
        assert f"jax.distributed: process {rank} of 2" in logs[rank], logs[rank][-3000:]
        assert "resumed from gs://bucket/pod/checkpoints at step 4" in logs2[rank], logs2[rank][-3000:]
        assert "step 6/6" in logs2[rank]
        # The launcher appends each run's output to the worker's ~/auvmae.log.
        assert (homes / f"worker{rank}" / "auvmae.log").read_text().count("jax.distributed: process") == 2
    assert {"checkpoints", "config.json", "tensorboard"} <= set(out["top"])
    assert out["checkpoints"] == ["2", "4", "6"]
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(out["data"])
