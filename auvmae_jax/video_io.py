"""Video files in and out with PyAV (FFmpeg): streaming decode, probing, writing.

Decoding yields one frame at a time, so memory stays bounded for long videos. Any
container/codec FFmpeg reads works (mp4, avi, mov, mkv; h264, hevc, mpeg4, ...).
A file that cannot be opened is a `UserError` naming it; a file that breaks off
part-way (truncated, corrupt tail) yields the frames that decode, then a warning.
Frames come as a player shows them: a display rotation in the container (phones
store portrait videos as landscape frames plus a rotation) is applied, non-square pixels
are resized to square ones, and of several video streams the largest is read.
"""

from __future__ import annotations

import fractions
import logging
import os
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import av
import numpy as np

from auvmae_jax.errors import UserError

log = logging.getLogger("auvmae")

_READ_ERRORS = (av.FFmpegError, OSError, UnicodeDecodeError)


class Frame(NamedTuple):
    """One decoded frame: its 0-based index, presentation time (s) and pixels `[H, W, 3]` uint8."""

    index: int
    timestamp: float
    rgb: np.ndarray


class VideoInfo(NamedTuple):
    """Frame rate, frame count (estimated from the duration where the container has none), and
    the size of the frames as decoded (upright: after the display rotation)."""

    fps: float
    num_frames: int
    width: int
    height: int


def _open(path: str):
    if not os.path.exists(path):
        raise UserError(f"video {path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"video {path}: is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise UserError(f"video {path}: is an empty file")
    try:  # absolute: FFmpeg would read `take:1.mp4` or `10:30:00.mp4` as a protocol name
        container = av.open(os.path.abspath(path), mode="r")
    except _READ_ERRORS as e:
        raise UserError(f"video {path}: cannot be read as a video ({_reason(e)})") from None
    if not _streams(container):
        container.close()
        raise UserError(f"video {path}: has no video stream")
    return container


def _streams(container) -> list:
    """The container's video streams, cover art (attached pictures) left out."""
    return [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]


def video_stream(container):
    """The video stream to read: the largest picture (the first of equals), as FFmpeg's
    players pick; a file with one video stream has no choice."""
    streams = _streams(container)
    return max(streams, key=lambda s: int(s.codec_context.width or 0) * int(s.codec_context.height or 0))


def _pixel_aspect(stream) -> float:
    """Width / height of one stored pixel (1 where the file does not say)."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    return float(sar) if sar and float(sar) > 0 else 1.0


def _reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())  # one line


def _fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def display_size(width: int, height: int, pixel_aspect: float = 1.0) -> tuple[int, int]:
    """Stored `width x height` pixels of `pixel_aspect` (width / height of a pixel) as square pixels."""
    if abs(pixel_aspect - 1) <= 1e-3:
        return width, height
    return max(1, int(round(width * pixel_aspect))), height


def upright(rgb: np.ndarray, rotation: float, pixel_aspect: float = 1.0) -> np.ndarray:
    """`rgb` `[H, W, 3]` as a player shows it: resized to square pixels where the file's pixels
    are not square (`pixel_aspect`, the sample aspect ratio: DV, HDV, anamorphic DVD video),
    then turned as its container's display matrix says: `rotation` degrees counter-clockwise
    (PyAV's `VideoFrame.rotation`, FFmpeg's `av_display_rotation_get`), rounded to a quarter
    turn (a player shows other angles tilted; here they are rounded, with one warning per file
    from `iter_frames`). Mirroring in the matrix (rare) is not applied."""
    h, w = rgb.shape[:2]
    width, _ = display_size(w, h, pixel_aspect)
    if width != w:
        import cv2

        shrink = cv2.INTER_AREA if width < w else cv2.INTER_LINEAR
        rgb = cv2.resize(np.ascontiguousarray(rgb), (width, h), interpolation=shrink)
    quarters = _quarters(rotation) % 4
    return np.ascontiguousarray(np.rot90(rgb, quarters)) if quarters else rgb


def _quarters(rotation: float) -> int:
    """A display rotation in degrees as counter-clockwise quarter turns, rounded."""
    return int(round(rotation / 90.0))


def _rotation(frame) -> float:
    """The frame's display rotation in degrees counter-clockwise (0 where PyAV cannot tell)."""
    try:
        return float(getattr(frame, "rotation", 0) or 0)
    except (TypeError, ValueError):
        return 0.0


def probe(path: str | os.PathLike) -> VideoInfo:
    """Frame rate, frame count, width and height (as `iter_frames` yields the frames) of the
    video stream of `path` (`video_stream`)."""
    path = os.fspath(path)
    container = _open(path)
    try:
        stream = video_stream(container)
        fps = _fps(stream)
        count = int(stream.frames or 0)
        if count <= 0 and fps > 0:  # e.g. some avi/mkv: estimate from the duration
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            else:
                seconds = 0.0
            count = int(round(seconds * fps))
        ctx = stream.codec_context
        width, height = display_size(int(ctx.width), int(ctx.height), _pixel_aspect(stream))
        try:  # the display rotation is frame side data: read it off the first frame
            rotation = _rotation(next(container.decode(stream)))
        except (StopIteration, *_READ_ERRORS):
            rotation = 0.0
        if _quarters(rotation) % 2:
            width, height = height, width
        return VideoInfo(fps=fps, num_frames=count, width=width, height=height)
    finally:
        container.close()


def iter_frames(path: str | os.PathLike, warn: bool = True) -> Iterator[Frame]:
    """Decode the video stream of `path` (`video_stream`) frame by frame, as RGB uint8 `[H, W, 3]`.

    Each frame is shown as a player would (`upright`): square pixels, display rotation applied.
    Timestamps are the frames' presentation times relative to the first frame (the
    index divided by the frame rate where the file has none). Decoding errors after
    the first frame end the iteration with one warning (truncated files; `warn=False`:
    none, for a second pass over a file already reported); an error before any frame
    decodes is a `UserError`.
    """
    path = os.fspath(path)
    container = _open(path)
    index = 0
    try:
        stream = video_stream(container)
        streams = len(_streams(container))
        if warn and streams > 1:
            log.info("video %s: %d video streams; reading stream %d (%dx%d), the largest", path,
                     streams, stream.index, stream.codec_context.width, stream.codec_context.height)
        stream.thread_type = "AUTO"  # frame + slice threads: faster, same frames
        fps = _fps(stream)
        aspect = _pixel_aspect(stream)
        announced = int(stream.frames or 0)
        t0, tilted = None, False
        decoded = container.decode(stream)
        while True:
            try:
                frame = next(decoded)
            except StopIteration:
                break
            except _READ_ERRORS as e:
                if index == 0:
                    raise UserError(f"video {path}: no frame could be decoded ({_reason(e)})") from None
                if warn:
                    log.warning("video %s: decoding stopped after %d frames (%s); the rest is skipped",
                                path, index, _reason(e))
                warn = False  # one warning per file: not the frame count below as well
                break
            t = frame.time
            if t is None:
                t = index / fps if fps else float(index)
            if t0 is None:
                t0 = t
            rotation = _rotation(frame)
            if rotation % 90 and not tilted:
                log.warning("video %s: display rotation of %g degrees, rounded to %d", path, rotation,
                            90 * _quarters(rotation))
                tilted = True
            yield Frame(index, float(t - t0), upright(frame.to_ndarray(format="rgb24"), rotation, aspect))
            index += 1
    finally:
        container.close()
    if index == 0:
        raise UserError(f"video {path}: contains no decodable frame")
    if warn and announced and index < announced:
        log.warning("video %s: %d frames decoded of the %d its header announces (truncated?)",
                    path, index, announced)


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 25.0,
                codec: str = "libx264", crf: int = 18) -> int:
    """Encode RGB uint8 frames `[H, W, 3]` (even H and W for yuv420p) to `path`; returns the count."""
    path = os.fspath(path)
    count = 0
    with av.open(os.path.abspath(path), mode="w") as container:
        stream = None
        for rgb in frames:
            rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
            if stream is None:
                stream = container.add_stream(codec, rate=int(round(fps)) if float(fps).is_integer()
                                              else fractions.Fraction(fps).limit_denominator(1001))
                stream.width, stream.height = rgb.shape[1], rgb.shape[0]
                stream.pix_fmt = "yuv420p"
                if codec == "libx264":
                    stream.options = {"crf": str(crf)}
                elif codec == "libx265":
                    stream.options = {"crf": str(crf), "x265-params": "log-level=error"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
            count += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return count
