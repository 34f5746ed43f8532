"""AU detection on a video file: one CSV row per frame, and a picture of the probabilities.

CSV columns: `frame` (0-based decode order), `timestamp` (s), `success` (1 where a
face box exists after gap filling), the face box `face_x, face_y, face_w, face_h`
(pixels of the frame) and one probability in [0, 1] per AU, named like OpenFace and
py-feat (`AU01`, `AU12`, ...). Frames without a face have `success=0` and empty AU
cells. Each frame's probabilities are the mean over the sliding clips that cover it.
"""

from __future__ import annotations

import io
import logging
import os

import jax
import numpy as np

from auvmae_jax import faces, features, paths
from auvmae_jax.errors import UserError
from auvmae_jax.models import AUDetector, inference_jit

log = logging.getLogger("auvmae")


def au_names(aus: list[int]) -> list[str]:
    """`[1, 12]` -> `['AU01', 'AU12']`."""
    return [f"AU{int(a):02d}" for a in aus]


def probability_fn(ckpt: features.Checkpoint):
    """Jitted: uint8 clips `[B, window, S, S, 3]` -> AU probabilities `[B, window, N]`."""
    from auvmae_jax.finetune import visible_positions

    model = AUDetector(ckpt.vit, len(ckpt.aus), ckpt.temporal_stride)
    params = ckpt.params
    seed = int(ckpt.config.get("seed", 0))

    @inference_jit
    def fn(frames):
        x = features.model_inputs(ckpt, frames)
        # patch level: the fixed tube mask of the evaluator (evaluation.py)
        visible = visible_positions(jax.random.key(seed + 3), x.shape[0], model, x.shape, ckpt.mask_ratio)
        return jax.nn.sigmoid(model.apply({"params": params}, x, visible))

    return fn


def predict_video(ckpt: features.Checkpoint, video: str, output: str, plot: str | None = None,
                  detect: bool = True, detector: str = "opencv", batch_size: int = 4, hop: int | None = None,
                  scale: float = 1.25, progress: bool = True, align: bool = True) -> dict:
    """Detect AUs in every frame of `video`, write the CSV (and the plot); returns a summary.

    With `detect`, the face crops are aligned (eyes horizontal) unless `align` is False.

    Summary: `frames`, `faces` (frames with success=1), `detected` (frames where the
    detector itself found a face), `clips` (clips run), `csv`, `plot`; the CLI prints it.
    `hop` (default half a clip) may not exceed the model's clip: every frame is in a clip.
    """
    if ckpt.aus is None:
        raise UserError(f"--checkpoint {ckpt.path} is a {ckpt.task} checkpoint: predict needs a fine-tuned "
                        "AU detector (auvmae finetune)")
    if video.lower().endswith(".npy"):
        raise UserError(f"video {video}: predict reads video files (mp4, avi, mov, mkv, ...); "
                        ".npy frames are taken by `auvmae features` only")
    w, s = ckpt.window, ckpt.image_size
    hop = features.clip_hop(hop, ckpt)  # at most a clip: every frame gets a prediction
    detector_obj = faces.FaceDetector(detector) if detect else None
    track = features.track_faces(video, detector_obj, progress, align=align)
    n = len(track.boxes)
    if detect and track.detected == 0:
        log.warning("%s: no face found in any of its %d frames; the CSV has success=0 everywhere", video, n)
    total = np.zeros((n, len(ckpt.aus)), np.float64)
    count = np.zeros(n, np.int64)
    clips = 0
    if any(b is not None for b in track.boxes):
        crops = features.iter_crops(video, track.boxes, s, scale if detect else 1.0, progress,
                                    angles=track.angles)
        fn = probability_fn(ckpt)
        for start, probs, has in features.run_batched(fn, features.iter_clips(crops, n, w, hop), batch_size,
                                                      (w, s, s, 3)):
            end = min(start + w, n)
            face = has[: end - start]  # frames of the clip without a face add nothing
            total[start:end] += probs[: end - start] * face[:, None]
            count[start:end] += face
            clips += 1
    success = np.array([b is not None for b in track.boxes]) & (count > 0)
    probs = total / np.maximum(count, 1)[:, None]
    write_csv(output, track, success, probs, ckpt.aus)
    if plot:
        plot_probabilities(plot, np.asarray(track.timestamps), np.where(success[:, None], probs, np.nan),
                           ckpt.aus, title=os.path.basename(video))
    return dict(frames=n, faces=int(success.sum()), detected=track.detected, clips=clips, csv=output,
                plot=plot)


def write_csv(path: str, track: features.Track, success: np.ndarray, probs: np.ndarray,
              aus: list[int]) -> None:
    """One row per frame; empty face and AU cells where `success` is 0."""
    rows = [["frame", "timestamp", "success", "face_x", "face_y", "face_w", "face_h", *au_names(aus)]]
    for i, (t, box) in enumerate(zip(track.timestamps, track.boxes)):
        face = [f"{v:.1f}" for v in box] if box is not None else [""] * 4
        aucells = [f"{p:.4f}" for p in probs[i]] if success[i] else [""] * len(aus)
        rows.append([i, f"{t:.3f}", int(success[i]), *face, *aucells])
    features.write_csv_rows(path, rows)


def time_edges(times: np.ndarray) -> np.ndarray:
    """`[T + 1]` edges of each frame's cell on a time axis: halfway to its neighbours, the first
    and last cells as wide as their neighbours' gaps (a variable frame rate gives unequal cells)."""
    t = np.asarray(times, np.float64)
    if len(t) < 2:
        start = float(t[0]) if len(t) else 0.0
        return np.array([start - 0.02, start + 0.02])
    mid = (t[1:] + t[:-1]) / 2
    return np.concatenate([[t[0] - (t[1] - t[0]) / 2], mid, [t[-1] + (t[-1] - t[-2]) / 2]])


def plot_probabilities(path: str, times: np.ndarray, probs: np.ndarray, aus: list[int],
                       title: str = "") -> None:
    """A heat map AU x time of `probs` `[T, N]` (NaN: no face, grey), with the 0.5 threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = au_names(aus)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 1.5 + 0.3 * len(aus)), sharex=True,
                                  gridspec_kw={"height_ratios": [len(aus), 3]}, layout="constrained")
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.8")
    im = ax.pcolormesh(time_edges(times), np.arange(len(aus) + 1) - 0.5, np.ma.masked_invalid(probs.T),
                       cmap=cmap, vmin=0, vmax=1)
    ax.set_ylim(len(aus) - 0.5, -0.5)
    ax.set_yticks(range(len(aus)), names)
    ax.set_title(f"AU probabilities {title}".strip())
    fig.colorbar(im, ax=[ax, ax2], fraction=0.02)
    ax2.plot(times, np.nansum(probs > 0.5, axis=1), color="k", lw=1)
    ax2.set_ylabel("AUs > 0.5")
    ax2.set_xlabel("time (s)")
    try:
        buf = io.BytesIO()  # the format from the name's extension (png, pdf, svg, ...)
        fig.savefig(buf, format=os.path.splitext(path)[1][1:].lower() or "png", dpi=100)
        paths.write_bytes(path, buf.getvalue())
    except (OSError, ValueError) as e:  # ValueError: a format matplotlib does not write
        raise UserError(f"{path}: cannot be written ({getattr(e, 'strerror', None) or e})") from None
    finally:
        plt.close(fig)
