"""`gs://` data dirs, against a local GCS emulator (gcp-storage-emulator).

ArrayRecord reads `gs://` files but writes only local ones: builds into a bucket are
staged on local disk and uploaded (`data_builders.staging`), and the training
pipeline reads the clips back from the bucket.
"""

import json
import os
import socket
import subprocess
import sys
import time

from tests.conftest import TINY_SYNTHETIC

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, os, sys
import numpy as np
import data_builders
from auvmae_jax import input_pipeline
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
print("RESULT " + json.dumps({"data_dir": str(again.data_dir), "files": files, "same": same,
                              "batch": list(batch["frames"].shape)}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_build_into_a_bucket_is_staged_uploaded_and_read_back(tmp_path):
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    emulator = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
                                 f"--port={port}", "--in-memory", "--default-bucket=bucket"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # wait until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        env = dict(os.environ, STORAGE_EMULATOR_HOST=endpoint, CLOUD_STORAGE_EMULATOR_ENDPOINT=endpoint,
                   GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false", GOOGLE_CLOUD_PROJECT="test",
                   AUVMAE_STAGING_DIR=str(tmp_path), JAX_PLATFORMS="cpu",
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        args = [json.dumps(TINY_SYNTHETIC), str(tmp_path / "local")]
        proc = subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
    finally:
        emulator.kill()
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])
    assert out["data_dir"].startswith("gs://bucket/tfds/synthetic_faces/")
    assert "dataset_info.json" in out["files"]
    assert "synthetic_faces-part1.array_record-00000-of-00001" in out["files"]
    assert len(out["same"]) > 4 and all(out["same"])  # every clip of two splits, byte for byte
    assert out["batch"] == [4, 4, 32, 32, 3]
    assert os.listdir(tmp_path) == ["local"]  # the staging folder is gone
