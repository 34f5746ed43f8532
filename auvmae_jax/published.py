"""The paper's published F1 scores (%), as data: to set a cross-validation beside them.

Tables 1 and 2: per-AU F1 of AU-vMAE and of the methods it compares with, BP4D (12 AUs)
and DISFA (8 AUs), each the mean over the three subject folds (video level, all losses,
minority-AU augmentation). Table 3: the mean F1 of the loss ablation at each input level.
Table 4: with and without the augmentation. The values are the paper's, as printed: its
averages too, though DRML's (both datasets) and EAC-Net's on DISFA are not the means of
their rows (48.5 printed, 57.4 the mean), as in the earlier papers they were taken from.
"""

from __future__ import annotations

from auvmae_jax.metrics import au_name

AUS = {"bp4d": (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24), "disfa": (1, 2, 4, 6, 9, 12, 25, 26)}
TABLE = {"bp4d": 1, "disfa": 2}

# Method: per-AU F1 in AUS order, then the average the paper prints.
F1 = {
    "bp4d": {
        "DRML": (36.4, 41.8, 43.0, 55.0, 67.0, 66.3, 65.8, 54.1, 33.2, 48.0, 31.7, 30.0, 48.3),
        "EAC-Net": (39.0, 35.2, 48.6, 76.1, 72.9, 81.9, 86.2, 58.8, 37.5, 59.1, 35.9, 35.8, 55.9),
        "JAA-Net": (47.2, 44.0, 54.9, 77.5, 74.6, 84.0, 86.9, 61.9, 43.6, 60.3, 42.7, 41.9, 60.0),
        "SEV-Net": (58.2, 50.4, 58.3, 81.9, 73.9, 87.8, 87.5, 61.6, 52.6, 62.2, 44.6, 47.6, 63.9),
        "FAUDT": (51.7, 49.3, 61.0, 77.8, 79.5, 82.9, 86.3, 67.6, 51.9, 63.0, 43.7, 56.3, 64.2),
        "HMP-PS": (53.1, 46.1, 56.0, 76.5, 76.9, 82.1, 86.4, 64.8, 51.5, 63.0, 49.9, 54.5, 63.4),
        "ME-AU": (52.7, 44.3, 60.9, 79.9, 80.1, 85.3, 89.2, 69.4, 55.4, 64.4, 49.8, 55.1, 65.5),
        "CAF-Net": (55.1, 49.3, 57.7, 78.3, 78.6, 85.1, 86.2, 67.4, 52.0, 64.4, 48.3, 56.2, 64.9),
        "AU-vMAE": (64.5, 57.4, 54.0, 70.9, 80.8, 83.6, 83.3, 69.1, 65.2, 73.0, 50.9, 58.2, 67.6),
    },
    "disfa": {
        "DRML": (17.3, 17.7, 37.4, 29.0, 10.7, 37.7, 38.5, 20.1, 26.7),
        "EAC-Net": (41.5, 26.4, 66.4, 50.7, 80.5, 89.3, 88.9, 15.6, 48.5),
        "JAA-Net": (43.7, 46.2, 56.0, 41.4, 44.7, 69.6, 88.3, 58.4, 56.0),
        "SEV-Net": (55.3, 53.1, 61.5, 53.6, 38.2, 71.6, 95.7, 41.5, 58.8),
        "FAUDT": (46.1, 48.6, 72.8, 56.7, 50.0, 72.1, 90.8, 55.4, 61.5),
        "HMP-PS": (38.0, 45.9, 65.2, 50.9, 50.8, 76.0, 93.3, 67.6, 61.0),
        "ME-AU": (54.6, 47.1, 72.9, 54.0, 55.7, 76.7, 91.1, 53.0, 63.1),
        "CAF-Net": (45.6, 55.7, 80.2, 51.0, 54.7, 79.0, 95.2, 65.3, 65.8),
        "AU-vMAE": (56.5, 62.6, 71.8, 59.2, 52.2, 88.0, 92.4, 73.7, 69.6),
    },
}

# Table 3: mean F1 of the ablation rows (`crossval.ABLATION_ROWS`) by dataset and level.
ABLATION = {
    "bp4d": {"video": {"baseline": 65.2, "+intra": 66.8, "+inter": 65.7, "+all": 67.6},
             "frame": {"baseline": 61.3, "+intra": 62.5, "+inter": 64.4, "+all": 64.8},
             "patch": {"baseline": 60.6, "+intra": 61.7, "+inter": 61.2, "+all": 63.0}},
    "disfa": {"video": {"baseline": 67.9, "+intra": 68.5, "+inter": 68.2, "+all": 69.6},
              "frame": {"baseline": 64.5, "+intra": 65.9, "+inter": 66.3, "+all": 66.5},
              "patch": {"baseline": 63.8, "+intra": 64.7, "+inter": 64.1, "+all": 65.4}},
}

# Table 4: AU-vMAE's mean F1 without and with the minority-AU augmentation.
AUGMENTATION = {"bp4d": {"raw": 67.1, "augmented": 67.6}, "disfa": {"raw": 69.2, "augmented": 69.6}}


def f1_rows(dataset: str) -> dict[str, dict]:
    """Tables 1/2 as `metrics.markdown_table` rows (`{'f1': {AU name: F1}, 'f1_mean': F1}`,
    F1 as fractions); empty for a dataset the paper does not report (the synthetic one)."""
    rows = {}
    for method, values in F1.get(dataset, {}).items():
        *per_au, mean = values
        rows[method] = {"f1": {au_name(a): v / 100 for a, v in zip(AUS[dataset], per_au)},
                        "f1_mean": mean / 100}
    return rows


def comparison_table(dataset: str, result: dict, aus, label: str = "this run (mean of 3 folds)") -> str:
    """Markdown: `result` (a fold mean, `metrics.average_folds`) above the paper's Table 1/2
    rows of `dataset`, over the AUs of `aus`; '' where the paper has no table for it."""
    from auvmae_jax import metrics

    rows = f1_rows(dataset)
    if not rows:
        return ""
    table = metrics.markdown_table({label: result, **{f"{m} (paper)": r for m, r in rows.items()}}, aus)
    return (f"Against the paper's Table {TABLE[dataset]} ({dataset.upper()}, F1 %; video level, "
            f"all losses, minority-AU clips in training):\n\n{table}")


def ablation_table(dataset: str, level: str, means: dict[str, float]) -> str:
    """Markdown: this ablation's mean F1 per row (`means`, fractions) beside Table 3's."""
    paper = ABLATION.get(dataset, {}).get(level)
    if not paper:
        return ""
    lines = [f"Against the paper's Table 3 ({dataset.upper()}, {level} level, mean F1 %):", "",
             "| Row | this run | paper |", "| --- | ---: | ---: |"]
    lines += [f"| {row} | {100 * means[row]:.1f} | {paper[row]:.1f} |" for row in paper if row in means]
    return "\n".join(lines)
