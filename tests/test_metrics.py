"""metrics.py against scikit-learn on known and random arrays."""
import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from assurexray.metrics import (
    binary_rates, classification_metrics, confusion_matrix, json_safe, ovr_auc, per_class_metrics)

CLASSES = ["Normal", "Benign", "Malignant"]


def random_case(seed: int, n: int = 200, k: int = 3, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    if ties:  # coarse scores force tied ranks
        logits = np.round(logits)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


@pytest.mark.parametrize("ties", [False, True])
def test_ovr_auc_matches_sklearn(ties):
    y, probs = random_case(0, ties=ties)
    for c in range(3):
        assert ovr_auc(y == c, probs[:, c]) == pytest.approx(skm.roc_auc_score(y == c, probs[:, c]))


def test_ovr_auc_is_vectorized_over_bootstrap_rows():
    y, probs = random_case(1)
    idx = np.random.default_rng(2).integers(0, len(y), (50, len(y)))
    batch = ovr_auc(y[idx] == 2, probs[idx, 2])
    assert batch.shape == (50,)
    expected = [skm.roc_auc_score(y[i] == 2, probs[i, 2]) for i in idx]
    np.testing.assert_allclose(batch, expected)


def test_ovr_auc_nan_when_one_class_absent():
    assert math.isnan(ovr_auc(np.zeros(5, bool), np.arange(5.0)))
    assert math.isnan(ovr_auc(np.ones(5, bool), np.arange(5.0)))


def test_binary_rates_match_sklearn():
    rng = np.random.default_rng(3)
    y, p = rng.random(300) < 0.3, rng.random(300) < 0.4
    r = binary_rates(y, p)
    assert r["sensitivity"] == pytest.approx(skm.recall_score(y, p))
    assert r["specificity"] == pytest.approx(skm.recall_score(~y, ~p))
    assert r["ppv"] == pytest.approx(skm.precision_score(y, p))
    assert r["npv"] == pytest.approx(skm.precision_score(~y, ~p))
    assert r["f1"] == pytest.approx(skm.f1_score(y, p))


def test_binary_rates_undefined_are_nan_not_zero():
    r = binary_rates(np.array([True, False]), np.array([False, False]))
    assert math.isnan(r["ppv"]) and r["sensitivity"] == 0.0


def test_per_class_batched_equals_loop():
    y, probs = random_case(4, n=60)
    idx = np.random.default_rng(5).integers(0, 60, (20, 60))
    batch = per_class_metrics(y[idx], probs[idx])
    for b in (0, 7, 19):
        single = per_class_metrics(y[idx[b]], probs[idx[b]])
        for key in ("auc", "sensitivity", "specificity", "support"):
            np.testing.assert_allclose(batch[key][b], single[key])


def test_classification_metrics_match_sklearn():
    y, probs = random_case(6, ties=True)
    pred = probs.argmax(1)
    m = classification_metrics(y, probs, CLASSES)
    assert m["n"] == len(y)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    recall = skm.recall_score(y, pred, average=None)
    precision = skm.precision_score(y, pred, average=None)
    f1 = skm.f1_score(y, pred, average=None)
    for i, c in enumerate(CLASSES):
        pc = m["per_class"][c]
        assert pc["support"] == int((y == i).sum())
        assert pc["auc"] == pytest.approx(skm.roc_auc_score(y == i, probs[:, i]))
        assert pc["sensitivity"] == pytest.approx(recall[i])
        assert pc["ppv"] == pytest.approx(precision[i])
        assert pc["f1"] == pytest.approx(f1[i])
        assert pc["specificity"] == pytest.approx(skm.recall_score(y != i, pred != i))
        assert pc["npv"] == pytest.approx(skm.precision_score(y != i, pred != i))
    assert m["notes"] == []


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_absent_class_gives_null_auc_and_a_note():
    y, probs = random_case(7)
    keep = y != 1
    y, probs = y[keep], probs[keep]
    pred = probs.argmax(1)
    m = classification_metrics(y, probs, CLASSES)
    assert math.isnan(m["per_class"]["Benign"]["auc"])
    assert any("Benign" in note for note in m["notes"])
    present = [0, 2]
    expected_auc = np.mean([skm.roc_auc_score(y == c, probs[:, c]) for c in present])
    assert m["macro_auc"] == pytest.approx(expected_auc)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(
        skm.f1_score(y, pred, labels=[0, 1, 2], average="macro", zero_division=np.nan))
    text = json.dumps(json_safe(m), allow_nan=False)
    assert json.loads(text)["per_class"]["Benign"]["auc"] is None


def test_confusion_matrix_and_bad_input():
    assert confusion_matrix(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]), 3).tolist() == \
        skm.confusion_matrix([0, 1, 2, 2], [0, 2, 2, 1]).tolist()
    with pytest.raises(ValueError, match="shape"):
        classification_metrics([0, 1], np.ones((3, 3)) / 3, CLASSES)
    with pytest.raises(ValueError, match="labels"):
        classification_metrics([0, 5], np.ones((2, 3)) / 3, CLASSES)


def test_json_safe_converts_numpy_and_nan():
    out = json_safe({"a": np.float32(0.5), "b": [np.nan, np.int64(3)], 1: np.array([1.0, np.inf])})
    assert out == {"a": 0.5, "b": [None, 3], "1": [1.0, None]}
