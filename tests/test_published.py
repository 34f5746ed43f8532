"""The paper's tables as data, and the comparison tables a cross-validation ends with."""

import numpy as np
import pytest

from auvmae_jax import metrics, published


@pytest.mark.parametrize("dataset,table,mean", [("bp4d", 1, 67.6), ("disfa", 2, 69.6)])
def test_au_vmae_rows_are_the_papers(dataset, table, mean):
    rows = published.f1_rows(dataset)
    assert list(rows)[-1] == "AU-vMAE" and len(rows) == 9
    ours = rows["AU-vMAE"]
    assert list(ours["f1"]) == [f"AU{a}" for a in published.AUS[dataset]]
    assert ours["f1_mean"] == pytest.approx(mean / 100)
    # Its printed average is the mean of its AUs, to the paper's rounding; and Table 4's
    # augmented figure and Table 3's video-level "+all" row are the same number.
    assert np.mean(list(ours["f1"].values())) == pytest.approx(mean / 100, abs=0.0005)
    assert published.AUGMENTATION[dataset]["augmented"] == mean
    assert published.ABLATION[dataset]["video"]["+all"] == mean
    assert published.TABLE[dataset] == table
    assert published.f1_rows("synthetic") == {}


def test_comparison_and_ablation_tables():
    aus = [1, 2, 4, 6, 9, 12, 25, 26, 7]  # DISFA's 8 and one more the paper's table lacks
    result = {"f1": {metrics.au_name(a): 0.5 for a in aus}, "f1_mean": 0.5}
    text = published.comparison_table("disfa", result, aus)
    lines = text.splitlines()
    assert lines[0].startswith("Against the paper's Table 2 (DISFA, F1 %")
    assert "| this run (mean of 3 folds) | " + " | ".join(["50.0"] * 10) + " |" in lines
    assert "| AU-vMAE (paper) | 56.5 | 62.6 | 71.8 | 59.2 | 52.2 | 88.0 | 92.4 | 73.7 | - | 69.6 |" in lines
    assert "| EAC-Net (paper) | 41.5 | 26.4 | 66.4 | 50.7 | 80.5 | 89.3 | 88.9 | 15.6 | - | 48.5 |" in lines
    assert published.comparison_table("synthetic", result, aus) == ""
    means = {"baseline": 0.601, "+intra": 0.612, "+inter": 0.605, "+all": 0.62}
    assert published.ablation_table("bp4d", "frame", means).splitlines()[2:] == [
        "| Row | this run | paper |", "| --- | ---: | ---: |", "| baseline | 60.1 | 61.3 |",
        "| +intra | 61.2 | 62.5 |", "| +inter | 60.5 | 64.4 |", "| +all | 62.0 | 64.8 |"]
    assert published.ablation_table("synthetic", "video", means) == ""
