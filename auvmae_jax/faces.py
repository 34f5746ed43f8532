"""Face boxes: detection in a frame, gap filling and smoothing over time, square crops.

The default detector is OpenCV's Haar cascade (`haarcascade_frontalface_alt2.xml`),
whose weights ship inside `opencv-python-headless` (`cv2.data.haarcascades`): no
download at run time. MTCNN (the paper's choice) is used where `facenet_pytorch`
or `mtcnn` is installed. Boxes are `(x, y, w, h)` in pixels of the frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from auvmae_jax.errors import UserError

KINDS = ("opencv", "mtcnn")
CASCADE = "haarcascade_frontalface_alt2.xml"


class Box(NamedTuple):
    """A face box in pixels: top-left corner, width, height."""

    x: float
    y: float
    w: float
    h: float


def _import_cv2():
    try:
        import cv2
    except ImportError:
        raise UserError("face detection needs OpenCV: pip install 'opencv-python-headless<5'") from None
    return cv2


class FaceDetector:
    """Finds the largest face in an RGB frame.

    Args:
      kind: "opencv" (Haar cascade, default) or "mtcnn" (needs `facenet_pytorch` or `mtcnn`).
      min_face: smallest face side searched, as a fraction of the frame's shorter side.
      max_side: frames larger than this (pixels, longer side) are shrunk before detection.
    """

    def __init__(self, kind: str = "opencv", min_face: float = 0.1, max_side: int = 640):
        if kind not in KINDS:
            raise UserError(f"face detector {kind!r} is not one of {KINDS}")
        self.kind, self.min_face, self.max_side = kind, min_face, max_side
        self._detect = self._opencv() if kind == "opencv" else self._mtcnn()

    def detect(self, rgb: np.ndarray) -> Box | None:
        """The largest face in `rgb` (uint8 `[H, W, 3]`), or None."""
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = rgb if scale == 1.0 else self._cv2_resize(rgb, scale)
        boxes = self._detect(small)
        if not boxes:
            return None
        x, y, bw, bh = max(boxes, key=lambda b: b[2] * b[3])
        return Box(x / scale, y / scale, bw / scale, bh / scale)

    @staticmethod
    def _cv2_resize(rgb: np.ndarray, scale: float) -> np.ndarray:
        cv2 = _import_cv2()
        h, w = rgb.shape[:2]
        return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                          interpolation=cv2.INTER_AREA)

    def _opencv(self):
        cv2 = _import_cv2()
        path = os.path.join(cv2.data.haarcascades, CASCADE)
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise UserError(f"OpenCV cascade {path} is missing (OpenCV 5 dropped them: "
                            "pip install 'opencv-python-headless<5')")

        def detect(rgb: np.ndarray) -> list[tuple[float, float, float, float]]:
            gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
            side = max(20, int(self.min_face * min(gray.shape)))
            found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=3, minSize=(side, side))
            return [tuple(float(v) for v in b) for b in found]

        return detect

    def _mtcnn(self):
        try:
            from facenet_pytorch import MTCNN
        except ImportError:
            MTCNN = None
        if MTCNN is not None:
            model = MTCNN(keep_all=True, device="cpu")

            def detect(rgb: np.ndarray) -> list[tuple[float, float, float, float]]:
                boxes, _ = model.detect(rgb)
                if boxes is None:
                    return []
                return [(float(x0), float(y0), float(x1 - x0), float(y1 - y0)) for x0, y0, x1, y1 in boxes]

            return detect
        try:
            from mtcnn import MTCNN as MTCNNPackage
        except ImportError:
            raise UserError("face detector 'mtcnn' needs facenet_pytorch or mtcnn: "
                            "pip install facenet-pytorch (or use --detector=opencv)") from None
        model = MTCNNPackage()

        def detect_pkg(rgb: np.ndarray) -> list[tuple[float, float, float, float]]:
            return [tuple(float(v) for v in f["box"]) for f in model.detect_faces(rgb)]

        return detect_pkg


def smooth_boxes(boxes: Sequence[Box | None], max_gap: int | None = 8, window: int = 5) -> list[Box | None]:
    """Fill short runs of missing boxes and smooth the boxes over time.

    A run of at most `max_gap` missing frames (None: any length) is filled by linear
    interpolation between the boxes on either side, or by the nearest box at the
    start or end of the video. Then each box becomes the mean of the boxes within
    `window` frames centred on it, over its own run of frames with a box (a gap left
    unfilled splits runs). Frames still without a box stay None.
    """
    n = len(boxes)
    arr = np.full((n, 4), np.nan)
    for i, b in enumerate(boxes):
        if b is not None:
            arr[i] = b
    have = ~np.isnan(arr[:, 0])
    if not have.any():
        return [None] * n
    idx = np.flatnonzero(have)
    i = 0
    while i < n:  # walk the runs of missing frames
        if have[i]:
            i += 1
            continue
        j = i
        while j < n and not have[j]:
            j += 1
        if max_gap is None or j - i <= max_gap:
            before = idx[idx < i]
            after = idx[idx >= j]
            for k in range(i, j):
                if len(before) and len(after):
                    a, b = before[-1], after[0]
                    arr[k] = arr[a] + (arr[b] - arr[a]) * (k - a) / (b - a)
                else:
                    arr[k] = arr[before[-1] if len(before) else after[0]]
        i = j
    filled = ~np.isnan(arr[:, 0])
    out: list[Box | None] = [None] * n
    half = max(window, 1) // 2
    for k in range(n):
        if not filled[k]:
            continue
        lo, hi = k, k
        while lo > max(k - half, 0) and filled[lo - 1]:
            lo -= 1
        while hi < min(k + half, n - 1) and filled[hi + 1]:
            hi += 1
        out[k] = Box(*(float(v) for v in arr[lo:hi + 1].mean(axis=0)))
    return out


def square_crop(rgb: np.ndarray, box: Box, size: int, scale: float = 1.25) -> np.ndarray:
    """`[size, size, 3]` uint8: the square of side `scale * max(w, h)` centred on `box`.

    Parts of the square outside the frame are black.
    """
    cv2 = _import_cv2()
    h, w = rgb.shape[:2]
    side = max(1, int(round(scale * max(box.w, box.h))))
    x0 = int(round(box.x + box.w / 2 - side / 2))
    y0 = int(round(box.y + box.h / 2 - side / 2))
    canvas = np.zeros((side, side, 3), np.uint8)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    crop = canvas
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """`[size, size, 3]`: the centred square of the whole frame, resized (already-cropped videos)."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    return square_crop(rgb, Box((w - side) / 2, (h - side) / 2, side, side), size, scale=1.0)
