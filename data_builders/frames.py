"""Reading a video's frames (file, image folder or zip) and turning them into face crops.

`FrameSource` says where the frames of one video are and which dataset frame
number each has. `face_crops` reads the frames a builder needs, finds the face
track (the detector of `auvmae_jax.faces`; the boxes of the frames with a face
smoothed over time, and a frame where no face is found takes the box of the
nearest frame with one, and is counted, as DATA.md says), aligns it (the eye-line
angle, smoothed over time, turned horizontal: `faces.smooth_angles`,
`faces.square_crop(..., angle=)`; frames without two eyes are counted), crops a
square around it, resizes to `image_size` and JPEG-encodes it, once, at build time.
Without detection (`--no-detect`) the frames are taken as face crops already: the
whole frame is resized to `image_size` x `image_size`; a video whose frames are not
square gets one warning in the report (its aspect ratio changes).
"""

from __future__ import annotations

import bisect
import dataclasses
import io
import os
import re
import zipfile
from collections.abc import Collection, Iterator

import numpy as np
from PIL import Image

from data_builders import clips
from data_builders.report import BuildReport

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class SkipVideo(Exception):
    """This video cannot be built; the message is the reason, in one line."""


@dataclasses.dataclass(frozen=True)
class FrameSource:
    """Where the frames of one video are.

    `images is None`: `path` is a video file whose k-th decoded frame (0-based) has
    number `first_number + k`. Otherwise `images` lists `(frame number, name)` of
    image files in the folder `path`, or members of the zip `path`.
    """

    path: str
    images: tuple[tuple[int, str], ...] | None = None
    first_number: int = 1

    @property
    def where(self) -> str:
        """`path`, with the folder inside the zip for frames in a zip (`F001.zip:F001/T1`)."""
        if self.images and self.path.lower().endswith(".zip"):
            return f"{self.path}:{os.path.dirname(self.images[0][1])}"
        return self.path

    def iter_frames(self, numbers: Collection[int] | None = None,
                    report: BuildReport | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(number, uint8 `[H, W, 3]`) in frame order, only `numbers` if given.

        An unreadable video raises `SkipVideo`; an unreadable image is reported and
        left out (the caller sees it as a missing frame).
        """
        if self.images is None:
            yield from self._video_frames(numbers)
            return
        wanted = None if numbers is None else set(numbers)
        archive = zipfile.ZipFile(self.path) if self.path.lower().endswith(".zip") else None
        try:
            for number, name in self.images:
                if wanted is not None and number not in wanted:
                    continue
                where = f"{self.path}:{name}" if archive else os.path.join(self.path, name)
                try:
                    data = archive.read(name) if archive else open(where, "rb").read()
                    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                except (OSError, ValueError, zipfile.BadZipFile) as e:
                    if report is not None:
                        report.problem(where, f"unreadable image ({_image_error(e)}); "
                                       "frame treated as missing")
                    continue
                yield number, rgb
        finally:
            if archive is not None:
                archive.close()

    def _video_frames(self, numbers):
        from auvmae_jax import video_io
        from auvmae_jax.errors import UserError

        last = max(numbers) if numbers else None
        wanted = None if numbers is None else set(numbers)
        try:
            for frame in video_io.iter_frames(self.path):
                number = self.first_number + frame.index
                if last is not None and number > last:
                    return
                if wanted is None or number in wanted:
                    yield number, frame.rgb
        except UserError as e:
            raise SkipVideo(error_reason(e, self.path)) from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _image_error(e: BaseException) -> str:
    """Why an image could not be read, without the object addresses PIL puts in its messages."""
    if isinstance(e, Image.UnidentifiedImageError):
        return "not a decodable JPEG/PNG/BMP"
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", _one_line(e)) or type(e).__name__


def error_reason(e: BaseException, path: str) -> str:
    """The error's message in one line, without the 'video PATH: ' that the report prints anyway."""
    text = _one_line(e)
    prefix = f"video {path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def numbered_images(names: Collection[str], where: str, report: BuildReport) -> tuple[tuple[int, str], ...]:
    """`(number, name)` of image files named by their frame number (`34.jpg`, `0034.jpg`), sorted.

    Other names are reported and left out. Two files with one number (`0015.jpg` and
    `15.jpg`) are reported and both left out: which is the frame is not known, so it is
    a frame without an image (a labelled one is `valid = 0`).
    """
    found: dict[int, list[str]] = {}
    odd = []
    for name in sorted(names):
        stem, suffix = os.path.splitext(os.path.basename(name))
        if suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if not stem.isdigit():
            odd.append(name)
            continue
        found.setdefault(int(stem), []).append(name)
    if odd:
        report.problem(where, f"{len(odd)} image(s) not named by a frame number, skipped (e.g. {odd[0]})")
    clashes = [files for files in found.values() if len(files) > 1]
    if clashes:
        report.problem(where, f"{len(clashes)} frame number(s) with more than one image (e.g. "
                       f"{' and '.join(clashes[0])}): left out, which is the frame is not known")
        report.count("frames_ambiguous", len(clashes))
    return tuple((n, files[0]) for n, files in sorted(found.items()) if len(files) == 1)


# ---------------------------------------------------------------------------- faces

_DETECTORS: dict[str, object] = {}


def _detector(kind: str):
    """One detector per process and kind (loading a cascade is not free)."""
    if kind not in _DETECTORS:
        from auvmae_jax import faces

        _DETECTORS[kind] = faces.FaceDetector(kind=kind)
    return _DETECTORS[kind]


def resize_whole(rgb: np.ndarray, size: int) -> np.ndarray:
    """The whole frame `[H, W, 3]` resized to `[size, size, 3]` (bilinear; stretched if not square)."""
    image = Image.fromarray(np.ascontiguousarray(rgb))
    return np.asarray(image.resize((size, size), Image.BILINEAR))


def fill_nearest(boxes: list) -> list:
    """Every `None` replaced by the nearest box (the earlier one on a tie); all `None` stays."""
    known = [i for i, b in enumerate(boxes) if b is not None]
    if not known:
        return list(boxes)
    out = list(boxes)
    for i, b in enumerate(boxes):
        if b is None:
            r = bisect.bisect_left(known, i)
            candidates = known[max(r - 1, 0):r + 1]
            out[i] = boxes[min(candidates, key=lambda k: (abs(k - i), k))]
    return out


def face_crops(source: FrameSource, numbers: Collection[int] | None, *, image_size: int,
               detect: bool, jpeg_quality: int, report: BuildReport,
               detector_kind: str = "opencv", scale: float = 1.25, align: bool = True) -> dict[int, bytes]:
    """Frame number -> JPEG bytes of the `image_size` face crop, for the frames that exist.

    With `detect`, frames are decoded twice (boxes and eye-line angles first, so that
    the track can be smoothed, then the crops) to keep memory bounded on long videos;
    with `align` the crops are rotated so that the eyes are horizontal. A frame without
    a face takes the (smoothed) box of the nearest frame with one, the earlier on a tie.
    Counts `frames_without_face` (and with `align` `frames_without_eyes`) in `report`;
    raises `SkipVideo` if no frame shows a face or no frame could be read. Without
    `detect`, each whole frame is resized; non-square frames are warned about once.
    """
    if not detect:
        out, shape = {}, None
        for n, rgb in source.iter_frames(numbers, report):
            if shape is None and rgb.shape[0] != rgb.shape[1]:
                shape = rgb.shape
                report.warn(source.where, f"frames are {shape[1]}x{shape[0]}, not square: resized whole to "
                            f"{image_size}x{image_size} (--no-detect), the aspect ratio changes")
            out[n] = clips.encode_jpeg(resize_whole(rgb, image_size), jpeg_quality)
        if not out:
            raise SkipVideo("no frame could be read")
        return out
    from auvmae_jax import faces

    detector = _detector(detector_kind)
    order, raw, raw_angles = [], [], []
    for n, rgb in source.iter_frames(numbers, report):
        order.append(n)
        box, angle = detector.find(rgb) if align else (detector.detect(rgb), None)
        raw.append(box)
        raw_angles.append(angle)
    if not order:
        raise SkipVideo("no frame could be read")
    missing = sum(b is None for b in raw)
    if missing == len(raw):
        raise SkipVideo(f"no face found in any of its {len(raw)} frames")
    report.count("frames_without_face", missing)
    if align:
        report.count("frames_without_eyes", sum(a is None for a in raw_angles) - missing)
    # Smoothing over the runs of detected boxes only (max_gap=0: no interpolation across a gap),
    # then each frame without a face takes the nearest detected frame's box.
    boxes = dict(zip(order, fill_nearest(faces.smooth_boxes(raw, max_gap=0))))
    angles = dict(zip(order, faces.smooth_angles(raw_angles) if align else [0.0] * len(order)))
    out = {}
    for n, rgb in source.iter_frames(set(order), None):  # problems were reported in the first pass
        crop = faces.square_crop(rgb, boxes[n], image_size, scale=scale, angle=angles[n])
        out[n] = clips.encode_jpeg(crop, jpeg_quality)
    return out
