"""AU intensity time lines: expression episodes plus independent per-AU blips.

A video alternates neutral gaps and expression episodes. An episode picks a
prototypical expression (a set of AUs, some optional), gives each AU a peak
intensity and a small onset delay, and follows an onset ramp, an apex plateau
and an offset ramp (smoothstep shapes, so labels have real onsets and offsets).
Speech episodes open and close the mouth periodically. On top, each AU has rare
short low-intensity blips of its own, so no AU is fully tied to its expression.
"""

from __future__ import annotations

import numpy as np

AUS = (1, 2, 4, 6, 7, 9, 10, 12, 15, 17, 23, 24, 25, 26)
"""AU numbers of the intensity (and label) columns, in order."""

LABEL_THRESHOLD = 2.0
"""An AU is active (label 1) where its intensity is at least this (DISFA's rule)."""

# (name, weight, core AUs, ((optional AU, probability), ...))
EXPRESSIONS = (
    ("smile", 0.21, (6, 12), ((25, 0.5),)),
    ("polite_smile", 0.07, (12,), ((25, 0.3),)),
    ("surprise", 0.045, (1, 2, 25, 26), ()),
    ("fear", 0.03, (1, 2, 4, 25), ((7, 0.3),)),
    ("anger", 0.085, (4, 7, 23), ((24, 0.4),)),
    ("sadness", 0.045, (1, 4, 15), ((17, 0.5),)),
    ("disgust", 0.06, (9, 10), ((4, 0.5), (25, 0.3))),
    ("pain", 0.08, (4, 6, 7), ((9, 0.2), (10, 0.6))),
    ("pressed_lips", 0.07, (24,), ((17, 0.35),)),
    ("chin_raise", 0.09, (17,), ((15, 0.2),)),
    ("talk", 0.21, (25,), ((26, 0.85), (10, 0.35))),
)
_COL = {au: i for i, au in enumerate(AUS)}


def _ramp(n: int) -> np.ndarray:
    """`[n]` smoothstep from just above 0 to just below 1."""
    s = (np.arange(n) + 1.0) / (n + 1.0)
    return s * s * (3 - 2 * s)


def _envelope(onset: int, apex: int, offset: int) -> np.ndarray:
    """`[onset + apex + offset]` in [0, 1]: rise, plateau, fall."""
    return np.concatenate([_ramp(onset), np.ones(apex), _ramp(offset)[::-1]])


def _add(intens: np.ndarray, col: int, start: int, curve: np.ndarray) -> None:
    """intens[start:, col] = max(intens, curve), clipped to the video."""
    n = len(intens)
    lo, hi = max(start, 0), min(start + len(curve), n)
    if lo < hi:
        seg = curve[lo - start:hi - start]
        intens[lo:hi, col] = np.maximum(intens[lo:hi, col], seg)


def sample_au_intensities(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """Random AU intensities for one continuous video.

    Returns:
      float32 `[num_frames, 14]` in [0, 5], columns in `AUS` order; active
      (label 1) means `>= LABEL_THRESHOLD`.
    """
    intens = np.zeros((num_frames, len(AUS)), np.float32)
    weights = np.array([e[1] for e in EXPRESSIONS])
    weights /= weights.sum()
    t = int(rng.integers(-20, 10))  # videos may start inside an episode
    while t < num_frames:
        name, _, core, optional = EXPRESSIONS[rng.choice(len(EXPRESSIONS), p=weights)]
        onset, apex, offset = (int(x) for x in rng.integers((3, 5, 4), (10, 36, 13)))
        env = _envelope(onset, apex, offset)
        if name == "talk":  # the mouth opens and closes at a syllable-ish rate
            k = np.arange(len(env))
            env = env * (0.7 + 0.3 * np.sin(2 * np.pi * k / rng.uniform(5, 9) + rng.uniform(0, 6.3)))
        aus = [(au, rng.uniform(2.5, 5.0)) for au in core]
        aus += [(au, rng.uniform(2.0, 4.5)) for au, p in optional if rng.random() < p]
        for au, peak in aus:
            _add(intens, _COL[au], t + int(rng.integers(0, 3)), peak * env)
        t += len(env) + int(rng.integers(4, 24))
    for col in range(len(AUS)):  # independent short blips, mostly below threshold
        for start in rng.integers(0, max(num_frames, 1), rng.poisson(num_frames / 200)):
            onset, apex, offset = (int(x) for x in rng.integers((1, 0, 1), (4, 4, 4)))
            _add(intens, col, int(start), rng.uniform(0.8, 3.0) * _envelope(onset, apex, offset))
    return np.clip(intens, 0.0, 5.0)


def labels_from_intensities(intensities: np.ndarray) -> np.ndarray:
    """uint8 `[T, N]` active labels from float `[T, N]` intensities."""
    return (np.asarray(intensities) >= LABEL_THRESHOLD).astype(np.uint8)
