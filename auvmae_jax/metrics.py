"""AU detection metrics (SPEC §2, paper §4): per-AU F1 and accuracy, fold averages, tables.

Conventions:
- A prediction is positive when `prob > threshold` (0.5, as `[p > 0.5]` in eq. 4); hard
  0/1 predictions pass through unchanged.
- Only valid entries count: `valid` non-zero (all, when None) and the label exactly 0 or
  1 (an unknown code such as BP4D's 9 is ignored even without a mask).
- F1 = 2 TP / (2 TP + FP + FN); an AU with no positive label and no positive prediction
  (or no valid frame) has F1 0, as sklearn's `zero_division=0`. Accuracy of an AU with no
  valid frame is 0 too.
- The all-positive baseline predicts 1 on every valid frame: F1 = 2 P / (n + P) for P
  positives among n valid frames.
- `num_frames` counts the frames with at least one valid label.
- Scores are fractions in [0, 1]; `markdown_table` prints percentages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from auvmae_jax.knowledge import label_mask

_KEYS = ("f1", "acc", "baseline_f1")


def au_name(au) -> str:
    """`1`, `"1"` or `"AU1"` -> `"AU1"`."""
    s = str(au)
    return s if s.upper().startswith("AU") else f"AU{s}"


def confusion_counts(probs_or_preds, labels, valid=None, threshold: float = 0.5) -> dict:
    """Per-AU counts over valid entries of `[..., N]` arrays.

    Returns `{"tp", "fp", "fn", "tn": int64 [N], "num_frames": int}`.
    """
    preds = np.asarray(probs_or_preds)
    labels = np.asarray(labels)
    if preds.shape != labels.shape:
        raise ValueError(f"predictions {preds.shape} and labels {labels.shape} differ in shape")
    y, m = label_mask(labels, valid)
    y, m = y.reshape(-1, y.shape[-1]) > 0, m.reshape(-1, m.shape[-1]) > 0
    p = preds.reshape(-1, preds.shape[-1]) > threshold
    return {
        "tp": np.sum(p & y & m, 0).astype(np.int64),
        "fp": np.sum(p & ~y & m, 0).astype(np.int64),
        "fn": np.sum(~p & y & m, 0).astype(np.int64),
        "tn": np.sum(~p & ~y & m, 0).astype(np.int64),
        "num_frames": int(np.sum(m.any(-1))),
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.where(den > 0, num / np.maximum(den, 1.0), 0.0)


def scores_from_counts(counts: Mapping) -> dict:
    """F1, accuracy and all-positive baseline F1 `[N]` (float64) and their means over AUs."""
    tp, fp, fn, tn = (np.asarray(counts[k]) for k in ("tp", "fp", "fn", "tn"))
    n = tp + fp + fn + tn
    pos = tp + fn
    out = {
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "acc": _ratio(tp + tn, n),
        "baseline_f1": _ratio(2 * pos, n + pos),
    }
    for k in _KEYS:
        out[f"{k}_mean"] = float(np.mean(out[k]))
    out["num_frames"] = int(counts["num_frames"])
    return out


def f1_accuracy(probs_or_preds, labels, valid=None, threshold: float = 0.5) -> dict:
    """Per-AU metrics of `[..., N]` probabilities (or 0/1 predictions) against labels.

    Returns `{"f1": [N], "acc": [N], "f1_mean", "acc_mean", "baseline_f1": [N],
    "baseline_f1_mean", "num_frames"}` (arrays float64, means Python floats).
    """
    return scores_from_counts(confusion_counts(probs_or_preds, labels, valid, threshold))


class AUMetrics:
    """Streaming accumulator: `update` with batches `[B, T, N]`, then `result(aus)`."""

    def __init__(self, num_aus: int, threshold: float = 0.5):
        self.num_aus = num_aus
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self.counts = {k: np.zeros(self.num_aus, np.int64) for k in ("tp", "fp", "fn", "tn")}
        self.counts["num_frames"] = 0

    def update(self, probs, labels, valid=None) -> None:
        """Add a batch: `probs`, `labels`, `valid` of shape `[..., N]` (NumPy or JAX)."""
        c = confusion_counts(probs, labels, valid, self.threshold)
        if c["tp"].shape != (self.num_aus,):
            raise ValueError(f"expected {self.num_aus} AUs, got {c['tp'].shape[0]}")
        for k, v in c.items():
            self.counts[k] = self.counts[k] + v

    def result(self, aus: Sequence) -> dict:
        """JSON-ready `{"f1": {"AU1": ..}, "f1_mean", "acc": {..}, "acc_mean",
        "baseline_f1": {..}, "baseline_f1_mean", "num_frames"}`."""
        if len(aus) != self.num_aus:
            raise ValueError(f"{len(aus)} AU names for {self.num_aus} AUs")
        return as_json(scores_from_counts(self.counts), aus)


def as_json(scores: Mapping, aus: Sequence) -> dict:
    """`f1_accuracy`'s arrays -> dicts keyed by AU name, all values Python scalars."""
    names = [au_name(a) for a in aus]
    out = {}
    for k in _KEYS:
        out[k] = {a: float(v) for a, v in zip(names, scores[k])}
        out[f"{k}_mean"] = float(scores[f"{k}_mean"])
    out["num_frames"] = int(scores["num_frames"])
    return out


def average_folds(results: Sequence[Mapping]) -> dict:
    """Mean over folds of each per-AU score and of each fold's mean; `num_frames` summed.

    `results`: `AUMetrics.result` dicts of the folds, with the same AUs.
    """
    if not results:
        raise ValueError("average_folds needs at least one fold result")
    names = list(results[0]["f1"])
    for r in results:
        if list(r["f1"]) != names:
            raise ValueError(f"folds disagree on the AUs: {names} vs {list(r['f1'])}")
    out = {}
    for k in _KEYS:
        out[k] = {a: float(np.mean([r[k][a] for r in results])) for a in names}
        out[f"{k}_mean"] = float(np.mean([r[f"{k}_mean"] for r in results]))
    out["num_frames"] = int(sum(r["num_frames"] for r in results))
    return out


def baseline_row(result: Mapping) -> dict:
    """The all-positive baseline of a result as a `markdown_table` row (F1 only)."""
    return {"f1": dict(result["baseline_f1"]) if isinstance(result["baseline_f1"], Mapping)
            else list(result["baseline_f1"]), "f1_mean": result["baseline_f1_mean"]}


def _values(result: Mapping, metric: str, names: list[str]) -> list[float | None]:
    vals = result.get(metric)
    if vals is None:
        return [None] * len(names)
    if isinstance(vals, Mapping):
        return [vals.get(a) for a in names]
    return [float(v) for v in vals]


def markdown_table(results_by_row: Mapping[str, Mapping], aus: Sequence, metric: str = "f1",
                   first_column: str = "Method") -> str:
    """A table shaped like the paper's Tables 1-2: one row per method/fold, columns AU.. and Avg.

    Each row's result holds `metric` (a dict keyed by AU name, or a sequence in `aus`
    order) and optionally `f"{metric}_mean"` (else the mean of the listed values). Values
    are printed in percent with one decimal; a missing AU prints `-`. No trailing newline.
    """
    names = [au_name(a) for a in aus]
    lines = ["| " + " | ".join([first_column, *names, "Avg"]) + " |",
             "| " + " | ".join(["---"] + ["---:"] * (len(names) + 1)) + " |"]
    for row, result in results_by_row.items():
        vals = _values(result, metric, names)
        if len(vals) != len(names):
            raise ValueError(f"row {row!r} has {len(vals)} values for {len(names)} AUs")
        known = [v for v in vals if v is not None]
        mean = result.get(f"{metric}_mean", float(np.mean(known)) if known else None)
        cells = ["-" if v is None else f"{100 * v:.1f}" for v in [*vals, mean]]
        lines.append("| " + " | ".join([row, *cells]) + " |")
    return "\n".join(lines)
