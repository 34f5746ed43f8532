"""Small replicas of the real datasets' folder layouts, written by the tests (DATA.md).

Frames are synthetic faces (`data_builders.synthetic_faces.render`) placed on a
larger background, so that a face detector has something to find and a crop differs
from the whole frame.
"""

from __future__ import annotations

import os

import numpy as np

from auvmae_jax import video_io
from data_builders import clips
from data_builders.synthetic_faces import render


def face_frames(seed: int, n: int, face: int = 48, frame=(64, 80)) -> np.ndarray:
    """uint8 `[n, H, W, 3]`: a rendered face of side `face` on a grey `frame` (H, W)."""
    rng = np.random.default_rng(seed)
    identity = render.sample_identity(rng)
    faces = render.render_frames(identity, np.zeros((n, len(render.AUS)), np.float32), face, rng)
    h, w = frame
    out = np.full((n, h, w, 3), 90, np.uint8)
    y, x = (h - face) // 2, (w - face) // 2
    out[:, y:y + face, x:x + face] = faces
    return out


def write_video(path: str, frames: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    video_io.write_video(path, frames, fps=20.0)
    return path


def write_corrupt(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"RIFF\x00\x00\x00\x00AVI not a real video" + bytes(range(256)) * 4)
    return path


def write_jpegs(folder: str, frames: np.ndarray, numbers, pad: int = 4) -> None:
    os.makedirs(folder, exist_ok=True)
    for number, rgb in zip(numbers, frames):
        name = f"{number:0{pad}d}.jpg" if pad else f"{number}.jpg"
        with open(os.path.join(folder, name), "wb") as f:
            f.write(clips.encode_jpeg(rgb, 95))
