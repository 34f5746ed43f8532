"""A local GCS emulator (gcp-storage-emulator) for the `gs://` tests.

`python -m tests.gcs_emulator start --port=N ...` runs the emulator with one fix:
its media downloads lack the `x-goog-generation` header that GCS sends with every
object read. TensorStore (orbax's storage layer) reads an object's generation from
that header and fails without it ("Malformed StorageGeneration").

`running(tmp_dir)` starts it on a free loopback port and yields the environment
that points gcsfs, google-cloud-storage, TensorStore and tensorboardX at it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time

from tests.conftest import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _with_generation_headers() -> None:
    from gcp_storage_emulator.handlers import objects  # before the server binds its routes

    download = objects.download

    def download_with_generation(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # not found: the 404 stands as it is
            return
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration") or 1)

    objects.download = download_with_generation


@contextlib.contextmanager
def running(staging_dir: str, bucket: str = "bucket"):
    """Emulator with `bucket` made; yields the environment for subprocesses that use it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    emulator = subprocess.Popen(
        [sys.executable, "-m", "tests.gcs_emulator", "start", "--host=127.0.0.1", f"--port={port}",
         "--in-memory", f"--default-bucket={bucket}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # wait until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield dict(
            os.environ,
            STORAGE_EMULATOR_HOST=endpoint, CLOUD_STORAGE_EMULATOR_ENDPOINT=endpoint,  # gcsfs, google-cloud
            TENSORSTORE_GCS_HTTP_URL=endpoint, GOOGLE_AUTH_TOKEN_FOR_TESTING="test",  # TensorStore (orbax)
            GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",  # no gRPC bucket-type probe (60 s time-outs)
            GOOGLE_CLOUD_PROJECT="test", AUVMAE_STAGING_DIR=str(staging_dir), JAX_PLATFORMS="cpu",
            PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    finally:
        emulator.kill()
        emulator.wait()


if __name__ == "__main__":
    _with_generation_headers()
    from gcp_storage_emulator.__main__ import main

    sys.exit(main())
