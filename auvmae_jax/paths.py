"""Paths that may be local or URLs (`gs://bucket/run`): every file the tasks write goes through here.

Local paths are expanded (`~`) and made absolute; URLs are kept as they are and
read/written through `etils.epath` (which reaches GCS where `gcsfs` is installed).
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np
from etils import epath

from auvmae_jax.errors import UserError


def is_url(path: str) -> bool:
    return "://" in str(path)


def resolve(path: str) -> str:
    """`path` absolute with `~` expanded, or the URL unchanged."""
    return str(path) if is_url(path) else os.path.abspath(os.path.expanduser(str(path)))


def join(path: str, *parts: str) -> str:
    return str(epath.Path(resolve(path)).joinpath(*parts))


def exists(path: str) -> bool:
    return epath.Path(resolve(path)).exists()


def makedirs(path: str) -> None:
    epath.Path(resolve(path)).mkdir(parents=True, exist_ok=True)


def write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path`, creating its parent folders."""
    p = epath.Path(resolve(path))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str, obj: Any, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent))


def read_json(path: str) -> Any:
    text = epath.Path(resolve(path)).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}): rewrite or remove it") from e


def save_npy(path: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array))
    write_bytes(path, buf.getvalue())


def load_npy(path: str) -> np.ndarray:
    return np.load(io.BytesIO(epath.Path(resolve(path)).read_bytes()))
