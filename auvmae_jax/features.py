"""Checkpoints for inference, face crops of a video, sliding clips, encoder features.

A checkpoint directory is a fine-tuning or pre-training workdir, or a directory
written by `auvmae convert`: `config.json` + orbax `checkpoints/`. A video is read
twice, streaming: first to find and smooth the face boxes and eye-line angles
(`faces.py`), then to crop the faces (rotated so that the eyes are horizontal) and
cut them into clips, so memory holds one clip batch, never
the video. `window_starts` places clips so that every frame is in one (the last
clip ends at the last frame); per-frame outputs of overlapping clips are averaged.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import io
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from auvmae_jax import faces, losses, paths, video_io
from auvmae_jax.errors import UserError
from auvmae_jax.models import Encoder, ViTConfig, inference_jit

log = logging.getLogger("auvmae")


@dataclasses.dataclass
class Checkpoint:
    """What inference needs from a checkpoint directory."""

    path: str
    task: str  # 'finetune', 'pretrain' or 'converted'
    config: Any
    vit: ViTConfig
    params: dict
    window: int  # frames covered by one clip
    temporal_stride: int  # the model sees every `temporal_stride`-th frame of the window
    image_size: int
    input_norm: str  # 'imagenet' or 'unit' ([0, 1] pixels, MARLIN)
    aus: list[int] | None = None  # fine-tuned checkpoints: the AU of each output
    mask_ratio: float = 0.0  # patch level: tube mask ratio of the encoder's input


def load_checkpoint(path: str) -> Checkpoint:
    """Read `path` (a workdir or a converted directory) for inference on this host's backend."""
    from auvmae_jax import finetune

    path = paths.resolve(path)  # local, or gs://
    cfg_path = paths.join(path, "config.json")
    if not paths.exists(cfg_path):
        raise UserError(f"--checkpoint {path}: no config.json (expected a training workdir or "
                        "a directory written by `auvmae convert`)")
    config = ml_collections.ConfigDict(paths.read_json(cfg_path))
    task = config.get("task") or "pretrain"
    vit = ViTConfig.from_config(config.model.to_dict())
    # Inference: float32 on CPU, no remat or drop path; a GPU keeps the trained compute dtype.
    on_cpu = jax.default_backend() == "cpu"
    vit = dataclasses.replace(vit, remat=False, drop_path=0.0, dtype="float32" if on_cpu else vit.dtype,
                              attention_impl=None if on_cpu else vit.attention_impl)
    params = finetune.load_checkpoint_params(path)
    if task == "finetune":
        level = finetune.level_settings(config)
        return Checkpoint(path, task, config, vit, params, window=int(config.clip_length),
                          temporal_stride=level.temporal_stride, image_size=int(config.data.image_size),
                          input_norm="imagenet", aus=_aus(path, config, params), mask_ratio=level.mask_ratio)
    data = config.data
    stride = int(data.get("temporal_stride", 1) or 1)
    return Checkpoint(path, task, config, vit, params, window=int(data.num_frames) * stride,
                      temporal_stride=stride, image_size=int(data.image_size),
                      input_norm=data.get("input_norm", "imagenet"))


def _aus(path: str, config, params: dict) -> list[int]:
    """AU numbers of a fine-tuned model's outputs: its priors.json, else its dataset's metadata."""
    priors = paths.join(path, "priors", "priors.json")
    if paths.exists(priors):
        return [int(a) for a in paths.read_json(priors)["aus"]]
    try:
        from auvmae_jax import finetune, input_pipeline

        return finetune.aus_of(input_pipeline.load_builder(config.data))
    except Exception as e:
        n = params["head"]["kernel"].shape[-1]
        raise UserError(f"{path}: no priors/priors.json and its dataset cannot be read ({e}); "
                        f"cannot name the model's {n} outputs") from None


def clip_hop(hop: int | None, ckpt: Checkpoint, gaps: bool = False) -> int:
    """Frames between clip starts: half a clip by default, at most a clip unless `gaps`.

    A hop longer than the clip skips the frames between clips; per-frame outputs need
    every frame in a clip, so that is an error naming the checkpoint's clip length."""
    w = ckpt.window
    if not hop:
        return max(w // 2, 1)
    if hop < 1:
        raise UserError(f"--hop={hop}: must be at least 1 frame")
    if hop > w and not gaps:
        raise UserError(f"--hop={hop}: longer than the {w}-frame clip of {ckpt.path}, so the frames between "
                        f"clips would get no output; use --hop={w} or less")
    return hop


def window_starts(num_frames: int, window: int, hop: int) -> list[int]:
    """Clip starts every `hop` frames, plus one ending at the last frame: every frame is covered."""
    if num_frames <= window:
        return [0]
    starts = list(range(0, num_frames - window + 1, max(hop, 1)))
    if starts[-1] != num_frames - window:
        starts.append(num_frames - window)
    return starts


# ---------------------------------------------------------------------------- frames of a video


@dataclasses.dataclass
class Track:
    """Per-frame timestamps, smoothed face boxes (None: no face) and eye-line angles of a video."""

    timestamps: list[float]
    boxes: list[faces.Box | None]
    found: list[bool] | None  # per frame: the detector itself found a face; None: no detector
    angles: list[float] | None = None  # smoothed eye-line angles (degrees); None: no alignment

    @property
    def detected(self) -> int:
        """Frames where the detector itself found a face."""
        return sum(self.found) if self.found else 0


@contextlib.contextmanager
def _progress(total: int | None, desc: str, enabled: bool):
    """A tqdm bar; log records while it shows (e.g. a truncated file) print on their own line above it."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with contextlib.ExitStack() as stack:
        if enabled:
            stack.enter_context(logging_redirect_tqdm())
        yield stack.enter_context(tqdm(total=total or None, desc=desc, unit="frame", disable=not enabled,
                                       file=sys.stderr, mininterval=1.0, dynamic_ncols=True))


def track_faces(path: str, detector: faces.FaceDetector | None, progress: bool = True,
                max_gap: int | None = 8, window: int = 5, align: bool = True, warn: bool = True) -> Track:
    """First pass over a video: timestamps, and face boxes unless `detector` is None.

    With a detector and `align`, also the eye-line angle of each frame, smoothed
    (`faces.smooth_angles`), for crops with the eyes horizontal. `warn`: report a
    truncated file (`video_io.iter_frames`)."""
    info = video_io.probe(path)
    times, raw, raw_angles, sizes = [], [], [], []
    with _progress(info.num_frames, "finding faces" if detector else "reading", progress) as bar:
        for frame in video_io.iter_frames(path, warn=warn):
            times.append(frame.timestamp)
            sizes.append(frame.rgb.shape[:2])
            if detector is None:
                h, w = frame.rgb.shape[:2]
                side = min(h, w)
                raw.append(faces.Box((w - side) / 2, (h - side) / 2, side, side))
            elif align:
                box, angle = detector.find(frame.rgb)
                raw.append(box)
                raw_angles.append(angle)
            else:
                raw.append(detector.detect(frame.rgb))
            bar.update(1)
    found = None if detector is None else [b is not None for b in raw]
    boxes, angles = raw, None
    if detector is not None:  # over each run of frames of one size (a stream may change size)
        boxes = _per_size(sizes, raw, lambda b: faces.smooth_boxes(b, max_gap=max_gap, window=window))
        if align:
            angles = _per_size(sizes, raw_angles, lambda a: faces.smooth_angles(a, window=window))
    return Track(times, boxes, found, angles)


def _per_size(sizes: list, values: list, fn) -> list:
    """`fn` applied to `values` over each run of consecutive frames of one size, concatenated."""
    out, start = [], 0
    for i in range(1, len(sizes) + 1):
        if i == len(sizes) or sizes[i] != sizes[start]:
            out.extend(fn(values[start:i]))
            start = i
    return out


def iter_crops(path: str, boxes: list[faces.Box | None], size: int, scale: float = 1.25,
               progress: bool = True, desc: str = "predicting",
               angles: list[float] | None = None) -> Iterator[tuple[int, np.ndarray | None]]:
    """Second pass: `(index, [size, size, 3] face crop or None)` for the frames of the first pass.

    `angles` (per frame, degrees): each crop is rotated so that that eye line is horizontal.
    A truncated file is not reported again: the first pass did."""
    with _progress(len(boxes), desc, progress) as bar:
        for frame in video_io.iter_frames(path, warn=False):
            if frame.index >= len(boxes):
                break
            box = boxes[frame.index]
            angle = 0.0 if angles is None else angles[frame.index]
            yield frame.index, None if box is None else faces.square_crop(frame.rgb, box, size, scale, angle)
            bar.update(1)


def array_crops(frames: np.ndarray, size: int) -> Iterator[tuple[int, np.ndarray]]:
    """Frames of an in-memory `[T, H, W, 3]` uint8 array, centre squares resized to `size`."""
    for i, rgb in enumerate(frames):
        yield i, faces.resize_square(np.ascontiguousarray(rgb), size)


def load_frames_npy(path: str) -> np.ndarray:
    """A `.npy` array of frames `[T, H, W, 3]` uint8 (memory-mapped)."""
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .npy array ({e})") from None
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or len(arr) == 0:
        raise UserError(f"{path}: expected uint8 frames [T, H, W, 3], got {arr.dtype} {list(arr.shape)}")
    return arr


def iter_clips(crops: Iterator[tuple[int, np.ndarray | None]], num_frames: int, window: int,
               hop: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """`(start, clip [window, S, S, 3], has_face [window])` for `window_starts(num_frames, ...)`.

    Frames without a crop repeat the last crop (black before the first); a video
    shorter than the window is padded with its last frame (not counted as a face).
    """
    starts = collections.deque(window_starts(num_frames, window, hop))
    buf: collections.deque = collections.deque(maxlen=window)
    have: collections.deque = collections.deque(maxlen=window)
    last = None
    for index, crop in crops:
        if crop is None:
            crop = last if last is not None else None
            have.append(False)
        else:
            last = crop
            have.append(True)
        buf.append(crop)
        while starts and index == starts[0] + window - 1:
            yield starts.popleft(), _stack(buf), np.array(have)
    if starts and buf:  # video shorter than the window
        pad = window - len(buf)
        clip = _stack(list(buf) + [buf[-1]] * pad)
        yield starts.popleft(), clip, np.array(list(have) + [False] * pad)


def _stack(crops) -> np.ndarray:
    ref = next((c for c in crops if c is not None), None)
    if ref is None:
        return np.zeros((len(crops), 1, 1, 3), np.uint8)  # no face in the clip: never run
    return np.stack([np.zeros_like(ref) if c is None else c for c in crops])


def run_batched(fn: Callable[[np.ndarray], np.ndarray], clips: Iterator[tuple[int, np.ndarray, np.ndarray]],
                batch_size: int, clip_shape: tuple[int, ...]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """`(start, output, has_face)` per clip with a face, computed `batch_size` clips at a time.

    The last batch is padded to `batch_size`, so `fn` compiles once.
    """
    pending: list[tuple[int, np.ndarray, np.ndarray]] = []

    def flush():
        batch = np.zeros((batch_size, *clip_shape), np.uint8)
        for i, (_, clip, _) in enumerate(pending):
            batch[i] = clip
        out = np.asarray(fn(batch))
        for i, (start, _, has) in enumerate(pending):
            yield start, out[i], has
        pending.clear()

    for start, clip, has in clips:
        if not has.any():
            continue
        pending.append((start, clip, has))
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()


def model_inputs(ckpt: Checkpoint, frames: jax.Array) -> jax.Array:
    """uint8 `[B, window, S, S, 3]` -> normalised `[B, window / stride, S, S, 3]` model input."""
    frames = frames[:, :: ckpt.temporal_stride]
    if ckpt.input_norm == "unit":
        return (frames.astype(jnp.float32) / 255.0).astype(ckpt.vit.dtype)
    return losses.normalize_frames(frames, ckpt.vit.dtype)[1]


# ---------------------------------------------------------------------------- features


def feature_fn(ckpt: Checkpoint) -> Callable[[np.ndarray], np.ndarray]:
    """Jitted: uint8 clips `[B, window, S, S, 3]` -> per-temporal-token features `[B, Tt, D]`."""
    encoder = Encoder(ckpt.vit)
    params = ckpt.params["encoder"]

    @inference_jit
    def fn(frames):
        x = model_inputs(ckpt, frames)
        tokens = encoder.apply({"params": params}, x)
        tt = x.shape[1] // ckpt.vit.tubelet_size
        return tokens.reshape(tokens.shape[0], tt, -1, tokens.shape[-1]).mean(axis=2).astype(jnp.float32)

    return fn


def extract_features(ckpt: Checkpoint, source: str, output: str, pool: str = "frame", detect: bool = True,
                     detector: str = "opencv", batch_size: int = 8, hop: int | None = None,
                     progress: bool = True, align: bool = True) -> np.ndarray:
    """Encoder features of a video (or `.npy` frames) -> `output` `.npy`; returns the array.

    With `detect`, the face crops are aligned (eyes horizontal) unless `align` is False.

    `pool='frame'`: `[T, D]`, each frame the mean over the clips covering it of its
    temporal token's spatial mean. `pool='clip'`: `[num_clips, D]`, the mean of each
    clip's tokens, with `output`'s `_clips.csv` giving each clip's frames. A video also
    gets `output`'s `_frames.csv`: each frame's timestamp and whether the detector found
    a face in it (`face_detected` 1/0; empty with `detect=False`). Frames without a face
    take the crop of the nearest face, so their features are of a neighbouring face.
    """
    if pool not in ("frame", "clip"):
        raise UserError(f"--pool={pool}: expected 'frame' or 'clip'")
    w, s = ckpt.window, ckpt.image_size
    hop = clip_hop(hop, ckpt, gaps=pool == "clip")  # per-clip features may skip frames; per-frame not
    found = None
    if source.endswith(".npy"):
        arr = load_frames_npy(source)
        n, times, crops = len(arr), None, array_crops(arr, s)
    else:
        track = track_faces(source, faces.FaceDetector(detector) if detect else None, progress,
                            max_gap=None, align=align)
        n, times, found = len(track.boxes), track.timestamps, track.found
        scale = 1.25 if detect else 1.0
        if detect and track.detected == 0:
            log.warning("%s: no face found in any frame; features are of the whole frame", source)
            track, scale = track_faces(source, None, progress=False, warn=False), 1.0
        crops = iter_crops(source, track.boxes, s, scale, progress=progress, desc="features",
                           angles=track.angles)
    fn = feature_fn(ckpt)
    r = ckpt.vit.tubelet_size * ckpt.temporal_stride  # frames per temporal token
    total = np.zeros((n, ckpt.vit.width), np.float64)
    count = np.zeros(n, np.int64)
    clips = []
    for start, feats, _ in run_batched(fn, iter_clips(crops, n, w, hop), batch_size, (w, s, s, 3)):
        per_frame = np.repeat(feats, r, axis=0)[: min(w, n - start)]
        total[start:start + len(per_frame)] += per_frame
        count[start:start + len(per_frame)] += 1
        clips.append((start, feats.mean(axis=0)))
    result = (total / np.maximum(count, 1)[:, None]) if pool == "frame" else np.stack([c for _, c in clips])
    result = result.astype(np.float32)
    _save(output, result)
    if pool == "clip":
        rows = [["clip", "start_frame", "end_frame", "start_time"]]
        rows += [[k, start, min(start + w, n) - 1, f"{times[start]:.3f}" if times else ""]
                 for k, (start, _) in enumerate(clips)]
        write_csv_rows(os.path.splitext(output)[0] + "_clips.csv", rows)
    if times is not None:
        rows = [["frame", "timestamp", "face_detected"]]
        rows += [[i, f"{t:.3f}", "" if found is None else int(found[i])] for i, t in enumerate(times)]
        write_csv_rows(os.path.splitext(output)[0] + "_frames.csv", rows)
    log.info("features %s of %d frames -> %s", list(result.shape), n, output)
    return result


def _save(output: str, array: np.ndarray) -> None:
    try:
        paths.save_npy(output, array)
    except OSError as e:
        raise UserError(f"{output}: cannot be written ({e.strerror or e})") from None


def write_csv_rows(path: str, rows: Iterable[list]) -> None:
    """A CSV file (local or gs://) of `rows`; a one-line error where it cannot be written."""
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)
    try:
        paths.write_text(path, buf.getvalue())
    except OSError as e:
        raise UserError(f"{path}: cannot be written ({e.strerror or e})") from None
