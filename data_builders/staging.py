"""Builds into `gs://` (or any URL) data dirs: write on local disk, then upload.

ArrayRecord reads `gs://` files (its GCS reader) but writes only local files, so a
builder whose `data_dir` is a URL prepares into a local staging folder first and
its version folder (`name/config/version`) is then copied up, `dataset_info.json`
last: a half-uploaded dataset never looks prepared.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from etils import epath

from auvmae_jax import paths

log = logging.getLogger("auvmae")

CHUNK = 64 << 20  # bytes per read while uploading


def prepare(make_builder: Callable[[str], Any], data_dir: str, build: Callable[[Any], None]) -> Any:
    """The builder `make_builder(data_dir)`, prepared by `build(builder)` unless it already is.

    A URL `data_dir` is built through a local folder under `$AUVMAE_STAGING_DIR` (default:
    the system's temporary folder), which needs room for the whole dataset version. The
    returned builder reads from `data_dir`; a staged one carries the local builder's
    `report` (the build report of the project's video builders), if it has one.
    """
    builder = make_builder(data_dir)
    if builder.is_prepared():
        return builder
    if not paths.is_url(data_dir):
        build(builder)
        return builder
    staging_root = os.path.expanduser(os.environ.get("AUVMAE_STAGING_DIR") or tempfile.gettempdir())
    os.makedirs(staging_root, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="auvmae_staging_", dir=staging_root) as tmp:
        local = make_builder(tmp)
        build(local)
        relative = os.path.relpath(str(local.data_dir), tmp)
        upload(str(local.data_dir), epath.Path(data_dir) / relative)
    remote = make_builder(data_dir)
    if hasattr(local, "report"):
        remote.report = local.report
    return remote


def upload(local_dir: str, target: epath.Path) -> int:
    """Copy every file under `local_dir` to `target`, `dataset_info.json` last; returns the count."""
    files = sorted((os.path.join(root, f) for root, _, names in os.walk(local_dir) for f in names),
                   key=lambda p: os.path.basename(p) == "dataset_info.json")
    log.info("uploading %d files from %s to %s", len(files), local_dir, target)
    for path in files:
        dst = target / os.path.relpath(path, local_dir)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as src, dst.open("wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
    return len(files)
