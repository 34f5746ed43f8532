"""Console metrics and the progress reporter's steps/s and ETA, on a fake clock."""

import logging

import numpy as np
import pytest

from auvmae_jax import metric_writers


def test_console_writer_formats_scalars_sorted(caplog):
    writer = metric_writers.ConsoleWriter()
    with caplog.at_level(logging.INFO, logger="auvmae"):
        writer.write_scalars(7, {"loss": 0.123456, "lr": 12345.6, "grad_norm": np.float32(2.0)})
        writer.write_images(7, {"recon": np.zeros((10, 20, 3), np.uint8)})
    # 4 significant digits; from 1e4 on, 4 decimals in scientific notation.
    assert caplog.messages == ["[7] grad_norm=2, loss=0.1235, lr=1.2346e+04", "[7] images: recon (10, 20, 3)"]


def test_console_writer_orders_aus_by_number(caplog):
    writer = metric_writers.ConsoleWriter()
    scalars = {f"eval/f1_AU{a}": a / 100 for a in (26, 1, 10, 2, 12, 4)}
    scalars["eval/f1_mean"] = 0.5
    with caplog.at_level(logging.INFO, logger="auvmae"):
        writer.write_scalars(3, scalars)
    # as numbers (AU2 before AU10), not as text (AU1, AU10, AU12, AU2, ...)
    assert caplog.messages == ["[3] eval/f1_AU1=0.01, eval/f1_AU2=0.02, eval/f1_AU4=0.04, eval/f1_AU10=0.1, "
                               "eval/f1_AU12=0.12, eval/f1_AU26=0.26, eval/f1_mean=0.5"]


def test_progress_reporter_rate_and_eta_on_a_fake_clock(monkeypatch, caplog):
    clock = iter([100.0, 105.0, 106.0, 107.0, 107.0])
    monkeypatch.setattr(metric_writers.time, "perf_counter", lambda: next(clock))
    progress = metric_writers.ProgressReporter(num_steps=100, first_step=10)  # t = 100 s at step 10
    with caplog.at_level(logging.INFO, logger="auvmae"):
        assert progress(20) == {"steps_per_sec": pytest.approx(2.0)}  # 10 steps in 5 s
        assert progress(30) == {"steps_per_sec": pytest.approx(10.0)}  # rate since the last report
        assert progress(31) == {"steps_per_sec": pytest.approx(1.0)}
        assert np.isfinite(progress(32)["steps_per_sec"])  # no time passed: no division by zero
    # ETA = steps left / rate: 80 / 2 = 40 s, 70 / 10 = 7 s, 69 / 1 = 69 s.
    assert caplog.messages[:3] == ["step 20/100, 2.00 steps/s, ETA 0h00m40s",
                                   "step 30/100, 10.00 steps/s, ETA 0h00m07s",
                                   "step 31/100, 1.00 steps/s, ETA 0h01m09s"]


def test_progress_restart_leaves_evaluation_time_out(monkeypatch):
    clock = iter([0.0, 10.0, 70.0, 75.0])  # steps 0-10 in 10 s, a 60 s evaluation, steps 10-20 in 5 s
    monkeypatch.setattr(metric_writers.time, "perf_counter", lambda: next(clock))
    progress = metric_writers.ProgressReporter(num_steps=100)
    assert progress(10) == {"steps_per_sec": pytest.approx(1.0)}
    progress.restart(10)  # after the evaluation
    assert progress(20) == {"steps_per_sec": pytest.approx(2.0)}  # not 10 / 65


def test_duration_text():
    assert metric_writers._duration(3723.9) == "1h02m03s"
    assert metric_writers._duration(float("nan")) == "?"
