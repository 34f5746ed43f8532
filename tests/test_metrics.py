"""AU metrics against values worked out by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from auvmae_jax import metrics

# 5 frames, 3 AUs.
# AU0: labels 1 1 0 0 1, probs .9 .2 .7 .1 .8, frame 4 invalid ->
#      on frames 0-3 preds 1 0 1 0: TP 1, FN 1, FP 1, TN 1 -> F1 2/4, acc 2/4;
#      baseline (2 positives of 4): 2*2 / (4 + 2) = 2/3.
# AU1: never positive, never predicted -> F1 0 (zero_division), acc 5/5, baseline 0.
# AU2: labels 1 0 1 1 0, probs .6 .6 .4 .9 .3 -> preds 1 1 0 1 0: TP 2, FP 1, FN 1, TN 1
#      -> F1 4/6, acc 3/5; baseline 2*3 / (5 + 3) = 3/4.
LABELS = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0]])
PROBS = np.array([[.9, .1, .6], [.2, .1, .6], [.7, .1, .4], [.1, .1, .9], [.8, .1, .3]])
VALID = np.array([[1, 1, 1]] * 4 + [[0, 1, 1]])
F1 = [0.5, 0.0, 2 / 3]
ACC = [0.5, 1.0, 0.6]
BASE = [2 / 3, 0.0, 0.75]


def test_f1_accuracy_by_hand():
    r = metrics.f1_accuracy(PROBS, LABELS, VALID)
    np.testing.assert_allclose(r["f1"], F1, atol=1e-12)
    np.testing.assert_allclose(r["acc"], ACC, atol=1e-12)
    np.testing.assert_allclose(r["baseline_f1"], BASE, atol=1e-12)
    assert r["f1_mean"] == pytest.approx(7 / 18)
    assert r["acc_mean"] == pytest.approx(0.7)
    assert r["baseline_f1_mean"] == pytest.approx(17 / 36)
    assert r["num_frames"] == 5


def test_invalid_entries_are_ignored():
    # Counting frame 4 of AU0 (pred 1, label 1) would give TP 2 -> F1 4/6, acc 3/5.
    r = metrics.f1_accuracy(PROBS, LABELS)
    assert r["f1"][0] == pytest.approx(2 / 3) and r["acc"][0] == pytest.approx(0.6)
    # An unknown code (9) is ignored without a mask; its prediction does not matter.
    coded = np.where(VALID == 0, 9, LABELS)
    r = metrics.f1_accuracy(PROBS, coded)
    np.testing.assert_allclose(r["f1"], F1, atol=1e-12)
    np.testing.assert_allclose(r["acc"], ACC, atol=1e-12)
    # A frame with no valid label at all is not counted in num_frames.
    valid = VALID.copy()
    valid[4] = 0
    assert metrics.f1_accuracy(PROBS, LABELS, valid)["num_frames"] == 4


def test_threshold_and_hard_predictions():
    preds = (PROBS > 0.5).astype(np.int32)
    r = metrics.f1_accuracy(preds, LABELS, VALID)
    np.testing.assert_allclose(r["f1"], F1, atol=1e-12)
    # p = 0.5 is negative: one AU, labels 1 0, probs .5 .5 -> no TP, acc 1/2, F1 0.
    r = metrics.f1_accuracy(np.array([[0.5], [0.5]]), np.array([[1], [0]]))
    assert r["f1"][0] == 0.0 and r["acc"][0] == 0.5
    # A higher threshold: AU2 preds 0 0 0 1 0 -> TP 1, FN 2, FP 0 -> F1 2/4, acc 3/5.
    r = metrics.f1_accuracy(PROBS, LABELS, VALID, threshold=0.65)
    assert r["f1"][2] == pytest.approx(0.5) and r["acc"][2] == pytest.approx(0.6)


def test_all_positive_baseline_is_f1_of_predicting_one():
    ones = np.ones_like(PROBS)
    r = metrics.f1_accuracy(ones, LABELS, VALID)
    np.testing.assert_allclose(r["f1"], BASE, atol=1e-12)
    np.testing.assert_allclose(r["baseline_f1"], BASE, atol=1e-12)


def test_streaming_accumulator_matches_and_is_json_ready():
    import json

    acc = metrics.AUMetrics(num_aus=3)
    # Batches [B, T, N]: frames 0-3 as [2, 2, 3], frame 4 as [1, 1, 3]; JAX arrays welcome.
    acc.update(jnp.asarray(PROBS[:4].reshape(2, 2, 3)), LABELS[:4].reshape(2, 2, 3),
               VALID[:4].reshape(2, 2, 3))
    acc.update(PROBS[4:].reshape(1, 1, 3), LABELS[4:].reshape(1, 1, 3), VALID[4:].reshape(1, 1, 3))
    res = acc.result([1, "2", "AU4"])
    assert list(res["f1"]) == ["AU1", "AU2", "AU4"]
    assert res["f1"]["AU1"] == pytest.approx(0.5) and res["f1"]["AU2"] == 0.0
    assert res["f1"]["AU4"] == pytest.approx(2 / 3)
    assert res["acc"] == pytest.approx({"AU1": 0.5, "AU2": 1.0, "AU4": 0.6})
    assert res["baseline_f1"] == pytest.approx({"AU1": 2 / 3, "AU2": 0.0, "AU4": 0.75})
    assert res["f1_mean"] == pytest.approx(7 / 18) and res["acc_mean"] == pytest.approx(0.7)
    assert res["baseline_f1_mean"] == pytest.approx(17 / 36)
    assert res["num_frames"] == 5
    assert set(res) == {"f1", "f1_mean", "acc", "acc_mean", "baseline_f1", "baseline_f1_mean",
                        "num_frames"}
    assert json.loads(json.dumps(res)) == res
    assert metrics.as_json(metrics.f1_accuracy(PROBS, LABELS, VALID), [1, 2, 4]) == res
    acc.reset()
    assert acc.result([1, 2, 4])["num_frames"] == 0
    with pytest.raises(ValueError):
        acc.update(PROBS[:, :2], LABELS[:, :2])


def _fold(f1, acc, base, n):
    return {"f1": dict(zip(["AU1", "AU2"], f1)), "f1_mean": sum(f1) / 2,
            "acc": dict(zip(["AU1", "AU2"], acc)), "acc_mean": sum(acc) / 2,
            "baseline_f1": dict(zip(["AU1", "AU2"], base)), "baseline_f1_mean": sum(base) / 2,
            "num_frames": n}


def test_average_folds():
    folds = [_fold([0.5, 0.7], [0.9, 0.8], [0.2, 0.4], 100),
             _fold([0.3, 0.9], [0.7, 0.6], [0.4, 0.6], 50)]
    avg = metrics.average_folds(folds)
    assert set(avg) == set(folds[0])
    assert avg["f1"] == pytest.approx({"AU1": 0.4, "AU2": 0.8})
    assert avg["f1_mean"] == pytest.approx(0.6)
    assert avg["acc"] == pytest.approx({"AU1": 0.8, "AU2": 0.7})
    assert avg["acc_mean"] == pytest.approx(0.75)
    assert avg["baseline_f1"] == pytest.approx({"AU1": 0.3, "AU2": 0.5})
    assert avg["baseline_f1_mean"] == pytest.approx(0.4)
    assert avg["num_frames"] == 150
    with pytest.raises(ValueError):
        metrics.average_folds([])


def test_markdown_table_text():
    folds = [_fold([0.5, 0.7], [0.9, 0.8], [0.2, 0.4], 100),
             _fold([0.3, 0.9], [0.7, 0.6], [0.4, 0.6], 50)]
    rows = {"fold 1": folds[0], "fold 2": folds[1], "Avg": metrics.average_folds(folds),
            "seq": {"f1": [0.1234, 0.5]}}  # a sequence in AU order; mean computed: 31.17%
    table = metrics.markdown_table(rows, [1, 2])
    assert table == (
        "| Method | AU1 | AU2 | Avg |\n"
        "| --- | ---: | ---: | ---: |\n"
        "| fold 1 | 50.0 | 70.0 | 60.0 |\n"
        "| fold 2 | 30.0 | 90.0 | 60.0 |\n"
        "| Avg | 40.0 | 80.0 | 60.0 |\n"
        "| seq | 12.3 | 50.0 | 31.2 |"
    )
    acc = metrics.markdown_table({"f": folds[0]}, ["AU1", "AU2", "AU4"], metric="acc", first_column="Fold")
    assert acc == ("| Fold | AU1 | AU2 | AU4 | Avg |\n| --- | ---: | ---: | ---: | ---: |\n"
                   "| f | 90.0 | 80.0 | - | 85.0 |")
    # The all-positive baseline row of a result (F1 only; other metrics print "-").
    base = metrics.baseline_row(folds[1])
    assert metrics.markdown_table({"all-positive": base}, [1, 2]).splitlines()[-1] == (
        "| all-positive | 40.0 | 60.0 | 50.0 |")
    assert metrics.markdown_table({"b": base}, [1, 2], metric="acc").splitlines()[-1] == "| b | - | - | - |"
