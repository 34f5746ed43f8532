"""Helpers shared by the labelled AU builders (synthetic, DISFA, BP4D).

They implement the record schema of DATA.md ("What the AU builders write"): one
example is one clip of `T` frames with per-frame labels and validity, the last
clip of a video is padded with `valid = 0`, and minority-AU clips follow SPEC §3.
No TensorFlow: features are plain `tfds.features.Tensor`s (JPEG bytes as strings).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core import writer as tfds_writer
from tensorflow_datasets.proto import tf_example_pb2

PARTS = ("part1", "part2", "part3")


def clip_starts(num_frames: int, clip_length: int, clip_stride: int | None = None) -> list[int]:
    """0-based start indices of clips that together cover every frame.

    Starts are `0, stride, 2 * stride, ...` up to the first clip that reaches the
    last frame; that clip may run past the end (pad it with `pad_clip`).
    `clip_stride` defaults to `clip_length` and may not exceed it (frames would be lost).
    """
    stride = clip_length if clip_stride is None else clip_stride
    if clip_length < 1 or not 1 <= stride <= clip_length:
        raise ValueError(f"need 1 <= clip_stride ({stride}) <= clip_length ({clip_length})")
    starts: list[int] = []
    if num_frames <= 0:
        return starts
    s = 0
    while True:
        starts.append(s)
        if s + clip_length >= num_frames:
            return starts
        s += stride


def pad_clip(frames: Sequence[Any], labels: np.ndarray, valid: np.ndarray, clip_length: int):
    """Pad a clip shorter than `clip_length` by repeating its last frame.

    Args:
      frames: `t >= 1` frames (a list of anything, e.g. JPEG bytes, or an array `[t, ...]`).
      labels, valid: `[t, N]`.
    Returns:
      (frames, labels, valid) of length `clip_length`, same container types; the
      padding has `labels = 0` and `valid = 0`.
    """
    t = len(frames)
    if t == 0 or t > clip_length:
        raise ValueError(f"cannot pad a clip of {t} frames to {clip_length}")
    labels, valid = np.asarray(labels), np.asarray(valid)
    n = clip_length - t
    if n == 0:
        return frames, labels, valid
    if isinstance(frames, np.ndarray):
        frames = np.concatenate([frames, np.repeat(frames[-1:], n, axis=0)])
    else:
        frames = list(frames) + [frames[-1]] * n
    pad = np.zeros((n,) + labels.shape[1:], labels.dtype)
    return frames, np.concatenate([labels, pad]), np.concatenate([valid, pad.astype(valid.dtype)])


def minority_spans(labels: np.ndarray, valid: np.ndarray, minority_columns: Sequence[int],
                   quiet: int = 15) -> list[tuple[int, int]]:
    """Minority-AU spans of one video (SPEC §3), as 0-based half-open `(start, end)`.

    A span starts at a frame where any minority AU is active (label 1 and valid)
    and ends once `quiet` consecutive following frames carry no minority AU; those
    quiet frames belong to the span (it shows the offset). An active frame inside
    the quiet run extends the span, so close spans merge. The video end cuts a span.

    Args:
      labels, valid: `[F, N]`.
      minority_columns: indices into the N columns.
    """
    cols = list(minority_columns)
    if not cols:
        return []
    lab, val = np.asarray(labels)[:, cols], np.asarray(valid)[:, cols]
    active = np.flatnonzero(np.any((lab > 0) & (val > 0), axis=1))
    spans: list[tuple[int, int]] = []
    n = len(labels)
    for f in active:
        if spans and f < spans[-1][1]:
            spans[-1] = (spans[-1][0], min(f + 1 + quiet, n))
        else:
            spans.append((int(f), min(int(f) + 1 + quiet, n)))
    return spans


def iter_clips(num_frames: int, clip_length: int, clip_stride: int | None = None,
               spans: Sequence[tuple[int, int]] | None = None) -> Iterator[tuple[int, int]]:
    """(start, end) frame ranges of the clips of one video, 0-based, `end <= num_frames`.

    Without `spans`: `clip_starts` over the whole video. With `spans` (minority-AU spans,
    SPEC §3: a clip ends once 15 quiet frames follow): each span is cut by `clip_starts`
    with stride `clip_length`, and no clip runs past its span's end. A clip with
    `end - start < clip_length` needs `pad_clip` (its padding has `valid = 0`).
    """
    ranges = [(0, num_frames)] if spans is None else list(spans)
    stride = clip_stride if spans is None else clip_length
    for lo, hi in ranges:
        hi = min(hi, num_frames)
        for s in clip_starts(hi - lo, clip_length, stride):
            yield lo + s, min(lo + s + clip_length, hi)


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of a uint8 `[H, W, 3]` frame (PIL, deterministic for a given libjpeg)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(frame, np.uint8)).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def au_clip_features(clip_length: int, num_aus: int) -> tfds.features.FeaturesDict:
    """The DATA.md record schema for clips of `clip_length` frames and `num_aus` AU columns.

    `frames` is a string Tensor of JPEG bytes (no tfds Image/Video: they need TF);
    read back through `as_data_source` it is an object array of `bytes`.
    """
    t, n = clip_length, num_aus
    return tfds.features.FeaturesDict({
        "frames": tfds.features.Tensor(shape=(t,), dtype=np.object_, doc="JPEG bytes per frame"),
        "labels": tfds.features.Tensor(shape=(t, n), dtype=np.uint8, doc="1 = AU active"),
        "valid": tfds.features.Tensor(shape=(t, n), dtype=np.uint8, doc="0 = unknown (padding)"),
        "subject": tfds.features.Text(doc="subject id"),
        "video": tfds.features.Text(doc="video id"),
        "start_frame": tfds.features.Scalar(dtype=np.int32, doc="dataset frame number of the first frame"),
    })


def _subject_hash(subject_id: str) -> int:
    return int.from_bytes(hashlib.sha256(subject_id.encode("utf-8")).digest()[:8], "big")


def part_of_subject(subject_id: str) -> str:
    """'part1' | 'part2' | 'part3' by a stable hash of the subject id (sha256, not `hash()`)."""
    return PARTS[_subject_hash(subject_id) % 3]


def assign_parts(subject_ids: Sequence[str]) -> dict[str, str]:
    """Subject id -> part, by `part_of_subject`.

    If that leaves a part empty although there are at least three subjects (likely
    for small counts), all subjects are dealt round-robin in order of their hash
    instead, which fills every part and is still independent of input order.
    """
    ids = sorted(set(subject_ids))
    parts = {s: part_of_subject(s) for s in ids}
    if len(ids) >= len(PARTS) and set(parts.values()) != set(PARTS):
        by_hash = sorted(ids, key=lambda s: (_subject_hash(s), s))
        parts = {s: PARTS[i % len(PARTS)] for i, s in enumerate(by_hash)}
    return parts


class DeterministicExampleWriter(tfds_writer.ExampleWriter):
    """Writes each tf.Example re-serialized with sorted feature keys.

    TFDS serializes with protobuf's default (upb) map order, which changes from
    one process to the next, so the same examples would give different shard
    bytes. Return this from a builder's `_example_writer` (the hook TFDS offers
    for custom writers) to make the bytes a function of the content only.
    """

    def write(self, path, examples):
        canonical = (
            (key, tf_example_pb2.Example.FromString(data).SerializeToString(deterministic=True))
            for key, data in examples
        )
        return super().write(path, canonical)
