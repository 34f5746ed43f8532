"""Metric writers: console + TensorBoard event files, and a progress reporter.

clu 0.0.12's `metric_writers` package imports TensorFlow on import (its
SummaryWriter), so these follow clu's `MetricWriter` interface on top of
tensorboardX instead; TensorBoard reads the event files as usual.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from auvmae_jax import paths

log = logging.getLogger("auvmae")


class MetricWriter:
    """clu-style interface: scalars, images (uint8 `[H, W, 3]`), hparams."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None: ...

    def write_hparams(self, hparams: Mapping[str, Any]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def natural_key(name: str) -> list:
    """Sort key that orders the numbers inside names by value: `f1_AU2` before `f1_AU10`."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


class ConsoleWriter(MetricWriter):
    def write_scalars(self, step, scalars):
        text = ", ".join(f"{k}={_fmt(scalars[k])}" for k in sorted(scalars, key=natural_key))
        log.info("[%d] %s", step, text)

    def write_images(self, step, images):
        log.info("[%d] images: %s", step, ", ".join(f"{k} {np.shape(v)}" for k, v in images.items()))

    def write_hparams(self, hparams):
        log.info("hparams: %s", dict(hparams))


class TensorBoardWriter(MetricWriter):
    """Event files under `logdir` through tensorboardX.

    tensorboardX keeps a `gs://` event file in memory and uploads all of it again at every
    flush (every 10 s): a long run's reconstruction pictures would be re-sent for as long
    as it lasts. At URLs, a new event file therefore starts after each batch of images and
    every `ROTATE_SCALARS` scalars (~0.5 MB); TensorBoard reads a run's files in name order,
    which is their order here (time, then a counter).
    """

    ROTATE_SCALARS = 10_000

    def __init__(self, logdir: str):
        self._logdir, self._rotates = logdir, paths.is_url(logdir)
        self._files = self._scalars = 0
        self._writer = self._open()

    def _open(self):
        from tensorboardX import SummaryWriter

        self._files += 1
        return SummaryWriter(logdir=self._logdir, flush_secs=10, filename_suffix=f".{self._files:05d}")

    def _rotate(self):
        if self._rotates:
            self._writer.close()
            self._writer, self._scalars = self._open(), 0

    def write_scalars(self, step, scalars):
        for k, v in scalars.items():
            self._writer.add_scalar(k, float(v), global_step=step)
        self._scalars += len(scalars)
        if self._scalars >= self.ROTATE_SCALARS:
            self._rotate()

    def write_images(self, step, images):
        for k, v in images.items():
            self._writer.add_image(k, np.asarray(v), global_step=step, dataformats="HWC")
        self._rotate()

    def write_hparams(self, hparams):
        self._writer.add_text("hparams", "\n".join(f"    {k}: {v}" for k, v in sorted(hparams.items())))

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()


class MultiWriter(MetricWriter):
    def __init__(self, writers: Sequence[MetricWriter]):
        self._writers = list(writers)

    def write_scalars(self, step, scalars):
        for w in self._writers:
            w.write_scalars(step, scalars)

    def write_images(self, step, images):
        for w in self._writers:
            w.write_images(step, images)

    def write_hparams(self, hparams):
        for w in self._writers:
            w.write_hparams(hparams)

    def flush(self):
        for w in self._writers:
            w.flush()

    def close(self):
        for w in self._writers:
            w.close()


def create_writer(logdir: str) -> MetricWriter:
    """Console on every process; TensorBoard events from process 0 only."""
    if jax.process_index() != 0:
        return MetricWriter()
    if not paths.is_url(logdir):  # tensorboardX writes gs:// and s3:// URLs itself
        os.makedirs(logdir, exist_ok=True)
    return MultiWriter([ConsoleWriter(), TensorBoardWriter(logdir)])


class ProgressReporter:
    """Measures steps/s between reports and predicts the time left."""

    def __init__(self, num_steps: int, first_step: int = 0):
        self.num_steps = num_steps
        self._last_step = first_step
        self._last_time = time.perf_counter()

    def __call__(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        eta = (self.num_steps - step) / rate if rate > 0 else float("nan")
        log.info("step %d/%d, %.2f steps/s, ETA %s", step, self.num_steps, rate, _duration(eta))
        return {"steps_per_sec": rate}

    def restart(self, step: int) -> None:
        """Measure the next rate from here: time spent since the last report outside training
        (an evaluation) is not counted as steps' time."""
        self._last_step, self._last_time = step, time.perf_counter()


def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def _fmt(v: Any) -> str:
    v = float(v)
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.4e}"
