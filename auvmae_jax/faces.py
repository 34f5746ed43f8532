"""Face boxes and in-plane alignment: detection in a frame, smoothing over time, crops.

The default detector is OpenCV's Haar cascade (`haarcascade_frontalface_alt2.xml`),
whose weights ship inside `opencv-python-headless` (`cv2.data.haarcascades`): no
download at run time. MTCNN (the paper's choice) is used where `facenet_pytorch`
or `mtcnn` is installed. Boxes are `(x, y, w, h)` in pixels of the frame.

Alignment is the roll of the head: the angle of the line from the eye on the
image's left to the eye on its right, in degrees, positive where the right one is
lower (y points down). OpenCV finds the eyes with its eye cascades
(`haarcascade_eye.xml`, then `haarcascade_eye_tree_eyeglasses.xml`) in the upper
part of the face box; MTCNN gives its own eye landmarks. Angles are smoothed over
time (`smooth_angles`) and `square_crop(..., angle=...)` rotates the crop about the
box centre so that the eyes become horizontal.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from auvmae_jax.errors import UserError

KINDS = ("opencv", "mtcnn")
CASCADE = "haarcascade_frontalface_alt2.xml"
EYE_CASCADES = ("haarcascade_eye.xml", "haarcascade_eye_tree_eyeglasses.xml")
MAX_ROLL = 30.0  # degrees: an eye pair tilted more than this is not taken for eyes
EYE_SEARCH_WIDTH = 200  # pixels: the face box is resized to this width to search its eyes


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


Eyes = tuple[tuple[float, float], tuple[float, float]]  # two eye centres (x, y) in pixels


class FaceDetector:
    """Finds the largest face in an RGB frame, and the roll of its eye line.

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
        self._eye_cascades = None  # loaded on the first `eye_angle`

    def detect(self, rgb: np.ndarray) -> Box | None:
        """The largest face in `rgb` (uint8 `[H, W, 3]`), or None."""
        return self._largest(rgb)[0]

    def find(self, rgb: np.ndarray) -> tuple[Box | None, float | None]:
        """The largest face in `rgb` and its eye-line angle in degrees (None: no face, or no
        two plausible eyes). MTCNN's angle comes from its eye landmarks, OpenCV's from `eye_angle`."""
        box, eyes = self._largest(rgb)
        if box is None:
            return None, None
        if self.kind == "mtcnn":
            return box, None if eyes is None else plausible_angle(*eyes)
        return box, self.eye_angle(rgb, box)

    def _largest(self, rgb: np.ndarray) -> tuple[Box | None, Eyes | None]:
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = rgb if scale == 1.0 else self._cv2_resize(rgb, scale)
        found = self._detect(small)
        if not found:
            return None, None
        (x, y, bw, bh), eyes = max(found, key=lambda f: f[0][2] * f[0][3])
        if eyes is not None:
            eyes = tuple((ex / scale, ey / scale) for ex, ey in eyes)
        return Box(x / scale, y / scale, bw / scale, bh / scale), eyes

    def eye_angle(self, rgb: np.ndarray, box: Box) -> float | None:
        """Eye-line angle (degrees) of the face in `box`, from OpenCV's eye cascades, or None.

        The upper 60% of the box is resized to `EYE_SEARCH_WIDTH` pixels wide and
        searched with `haarcascade_eye.xml`, then, if that finds no plausible pair
        (`pick_eye_pair`), with `haarcascade_eye_tree_eyeglasses.xml`.
        """
        cv2 = _import_cv2()
        if self._eye_cascades is None:
            self._eye_cascades = [_load_cascade(cv2, name) for name in EYE_CASCADES]
        fh, fw = rgb.shape[:2]
        x0, y0 = max(int(math.floor(box.x)), 0), max(int(math.floor(box.y)), 0)
        x1, y1 = min(int(math.ceil(box.x + box.w)), fw), min(int(math.ceil(box.y + 0.6 * box.h)), fh)
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        k = EYE_SEARCH_WIDTH / box.w
        region = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
        region = cv2.resize(region, (max(1, round((x1 - x0) * k)), max(1, round((y1 - y0) * k))),
                            interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
        region = cv2.equalizeHist(region)
        smallest, largest = int(0.08 * EYE_SEARCH_WIDTH), int(0.4 * EYE_SEARCH_WIDTH)
        for cascade in self._eye_cascades:
            found = cascade.detectMultiScale(region, scaleFactor=1.05, minNeighbors=3,
                                             minSize=(smallest, smallest), maxSize=(largest, largest))
            candidates = [(x0 + ex / k, y0 + ey / k, ew / k, eh / k) for ex, ey, ew, eh in found]
            pair = pick_eye_pair(candidates, box)
            if pair is not None:
                return eye_line_angle(*pair)
        return None

    @staticmethod
    def _cv2_resize(rgb: np.ndarray, scale: float) -> np.ndarray:
        cv2 = _import_cv2()
        h, w = rgb.shape[:2]
        return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                          interpolation=cv2.INTER_AREA)

    def _opencv(self):
        cv2 = _import_cv2()
        cascade = _load_cascade(cv2, CASCADE)

        def detect(rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], None]]:
            gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
            side = max(20, int(self.min_face * min(gray.shape)))
            found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=3, minSize=(side, side))
            return [(tuple(float(v) for v in b), None) for b in found]

        return detect

    def _mtcnn(self):
        try:
            from facenet_pytorch import MTCNN
        except ImportError:
            MTCNN = None
        if MTCNN is not None:
            model = MTCNN(keep_all=True, device="cpu")

            def detect(rgb: np.ndarray):
                boxes, _, points = model.detect(rgb, landmarks=True)
                if boxes is None:
                    return []
                return [((float(x0), float(y0), float(x1 - x0), float(y1 - y0)),
                         (tuple(float(v) for v in p[0]), tuple(float(v) for v in p[1])))
                        for (x0, y0, x1, y1), p in zip(boxes, points)]

            return detect
        try:
            from mtcnn import MTCNN as MTCNNPackage
        except ImportError:
            raise UserError("face detector 'mtcnn' needs facenet_pytorch or mtcnn: "
                            "pip install facenet-pytorch (or use --detector=opencv)") from None
        model = MTCNNPackage()

        def detect_pkg(rgb: np.ndarray):
            out = []
            for f in model.detect_faces(rgb):
                points = f.get("keypoints", {})
                eyes = None
                if "left_eye" in points and "right_eye" in points:
                    eyes = tuple(tuple(float(v) for v in points[k]) for k in ("left_eye", "right_eye"))
                out.append((tuple(float(v) for v in f["box"]), eyes))
            return out

        return detect_pkg


def _load_cascade(cv2, name: str):
    path = os.path.join(cv2.data.haarcascades, name)
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise UserError(f"OpenCV cascade {path} is missing (OpenCV 5 dropped them: "
                        "pip install 'opencv-python-headless<5')")
    return cascade


def eye_line_angle(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Degrees of the line from the leftmost of two points to the other (y down: positive
    where the right point is lower, i.e. the face is turned clockwise on screen)."""
    (lx, ly), (rx, ry) = sorted([a, b])
    return math.degrees(math.atan2(ry - ly, rx - lx))


def plausible_angle(a: tuple[float, float], b: tuple[float, float],
                    max_roll: float = MAX_ROLL) -> float | None:
    """`eye_line_angle(a, b)`, or None where it is beyond `max_roll` degrees."""
    angle = eye_line_angle(a, b)
    return angle if abs(angle) <= max_roll else None


def pick_eye_pair(candidates: Sequence[tuple[float, float, float, float]], box: Box,
                  max_roll: float = MAX_ROLL, max_size_ratio: float = 1.5) -> Eyes | None:
    """The two eye centres among eye-detector boxes `(x, y, w, h)`, or None.

    A plausible pair has one centre in each half of the face box, each at least
    0.07 box widths from its centre line, both in the upper 60% of the box; sides
    within `max_size_ratio` of each other, centres `0.25..0.8` box widths apart and
    an eye line within `max_roll` degrees of horizontal. Of several, the pair with
    the lowest cost wins: how far its midpoint is from the centre line (in 0.15 box
    widths) plus how different its sizes are (in `log(max_size_ratio)`).
    """
    mid = box.x + box.w / 2
    ok = [(x + w / 2, y + h / 2, max(w, h)) for x, y, w, h in candidates
          if box.y <= y + h / 2 <= box.y + 0.6 * box.h and box.x <= x + w / 2 <= box.x + box.w
          and abs(x + w / 2 - mid) >= 0.07 * box.w]
    best, best_key = None, None
    for lx, ly, ls in (c for c in ok if c[0] < mid):
        for rx, ry, rs in (c for c in ok if c[0] > mid):
            ratio = max(ls, rs) / min(ls, rs)
            if ratio > max_size_ratio:
                continue
            if not 0.25 * box.w <= math.hypot(rx - lx, ry - ly) <= 0.8 * box.w:
                continue
            if plausible_angle((lx, ly), (rx, ry), max_roll) is None:
                continue
            cost = abs((lx + rx) / 2 - mid) / (0.15 * box.w) + math.log(ratio) / math.log(max_size_ratio)
            key = (cost, lx, ly, rx, ry)
            if best_key is None or key < best_key:
                best, best_key = ((lx, ly), (rx, ry)), key
    return best


def smooth_boxes(boxes: Sequence[Box | None], max_gap: int | None = 8, window: int = 5) -> list[Box | None]:
    """Fill short runs of missing boxes and smooth the boxes over time.

    A run of at most `max_gap` missing frames (None: any length) is filled by linear
    interpolation between the boxes on either side, or by the nearest box at the
    start or end of the video. Then each box becomes the mean of the boxes within
    `window` frames centred on it, over its own run of frames with a box (a gap left
    unfilled splits runs). Frames still without a box stay None.
    """
    arr = np.full((len(boxes), 4), np.nan)
    for i, b in enumerate(boxes):
        if b is not None:
            arr[i] = b
    out = _fill_and_smooth(arr, max_gap, window)
    return [None if np.isnan(row[0]) else Box(*(float(v) for v in row)) for row in out]


def smooth_angles(angles: Sequence[float | None], window: int = 5, outlier: float = 8.0) -> list[float]:
    """Eye-line angles over time with outliers dropped, every gap filled and a moving average.

    An angle more than `outlier` degrees from the median of the known angles within
    `window` frames centred on it (a wrong pair of "eyes" in one frame) is dropped.
    Missing angles (None) are interpolated linearly between the nearest known ones
    (the nearest one at the start or end), then each angle becomes the mean of those
    within `window` frames centred on it, like `smooth_boxes`. With no angle at all,
    every frame gets 0 (no rotation).
    """
    arr = np.array([np.nan if a is None else float(a) for a in angles], np.float64)
    half = max(window, 1) // 2
    known = ~np.isnan(arr)
    keep = known.copy()
    for k in np.flatnonzero(known):
        near = arr[max(k - half, 0):k + half + 1]
        keep[k] = abs(arr[k] - np.median(near[~np.isnan(near)])) <= outlier
    arr[~keep] = np.nan
    out = _fill_and_smooth(arr[:, None], None, window)
    return [0.0 if np.isnan(v) else float(v) for v in out[:, 0]]


def _fill_and_smooth(arr: np.ndarray, max_gap: int | None, window: int) -> np.ndarray:
    """`[n, k]` rows with NaN where missing: gaps of at most `max_gap` rows interpolated,
    then a centred moving mean of `window` rows within each run of filled rows."""
    n = len(arr)
    arr = arr.copy()
    have = ~np.isnan(arr[:, 0])
    if not have.any():
        return arr
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
    out = np.full_like(arr, np.nan)
    half = max(window, 1) // 2
    for k in range(n):
        if not filled[k]:
            continue
        lo, hi = k, k
        while lo > max(k - half, 0) and filled[lo - 1]:
            lo -= 1
        while hi < min(k + half, n - 1) and filled[hi + 1]:
            hi += 1
        out[k] = arr[lo:hi + 1].mean(axis=0)
    return out


def square_crop(rgb: np.ndarray, box: Box, size: int, scale: float = 1.25, angle: float = 0.0) -> np.ndarray:
    """`[size, size, 3]` uint8: the square of side `scale * max(w, h)` centred on `box`.

    With a non-zero `angle` (an eye-line angle in degrees, `FaceDetector.find`), the
    frame is first rotated about the square's centre by `angle` counter-clockwise,
    so that an eye line at that angle comes out horizontal. Parts of the square
    outside the frame are black.
    """
    cv2 = _import_cv2()
    h, w = rgb.shape[:2]
    side = max(1, int(round(scale * max(box.w, box.h))))
    x0 = int(round(box.x + box.w / 2 - side / 2))
    y0 = int(round(box.y + box.h / 2 - side / 2))
    if angle:
        m = cv2.getRotationMatrix2D((x0 + (side - 1) / 2, y0 + (side - 1) / 2), float(angle), 1.0)
        m[:, 2] -= (x0, y0)
        crop = cv2.warpAffine(rgb, m, (side, side), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    else:
        crop = np.zeros((side, side, 3), np.uint8)
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + side, w), min(y0 + side, h)
        if sx1 > sx0 and sy1 > sy0:
            crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """`[size, size, 3]`: the centred square of the whole frame, resized (already-cropped videos)."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    return square_crop(rgb, Box((w - side) / 2, (h - side) / 2, side, side), size, scale=1.0)
