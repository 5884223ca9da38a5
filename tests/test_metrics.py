"""metrics.py against scikit-learn on known and random arrays; evaluation.py helpers."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torch.utils.data import DataLoader, TensorDataset

from assurexray.evaluation.curves import confusion_rows, curve_rows, evaluation_metrics, write_plots
from assurexray.evaluation.metrics import (
    binary_rates,
    classification_metrics,
    confusion_matrix,
    ovr_auc,
    per_class_metrics,
)
from assurexray.evaluation.predictions import SplitPredictions, read_predictions
from assurexray.inference.runner import check_cache_size, predict_logits
from assurexray.jsonio import json_safe

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
    # one macro AUC convention (issue 9 item 8): undefined, not a mean over the classes present
    assert math.isnan(m["macro_auc"]) and any("macro AUC" in note for note in m["notes"])
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(
        skm.f1_score(y, pred, labels=[0, 1, 2], average="macro", zero_division=np.nan))
    text = json.dumps(json_safe(m), allow_nan=False)
    assert json.loads(text)["per_class"]["Benign"]["auc"] is None
    assert json.loads(text)["macro_auc"] is None


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


# ------------------------------------------------------------------ evaluation helpers

class DropoutNet(torch.nn.Module):
    """Linear model with dropout: outputs are deterministic only in eval mode."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.drop, self.fc = torch.nn.Dropout(0.5), torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.drop(x))


def test_predict_logits_eval_mode_order_and_restored_mode():
    x = torch.randn(23, 4)
    data = TensorDataset(x, torch.zeros(23, dtype=torch.long))
    model = DropoutNet().train()
    a = predict_logits(model, data, batch_size=5, device="cpu")
    b = predict_logits(model, DataLoader(data, batch_size=23), batch_size=0, device="cpu")
    assert model.training, "the caller's train mode must be restored"
    assert a.shape == (23, 3) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(a, model.eval().fc(x).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        predict_logits(model, TensorDataset(torch.empty(0, 4)), 4, "cpu")


def test_predictions_table_round_trip(tmp_path):
    y, probs = random_case(8, n=40)
    preds = SplitPredictions(np.array([f"id{i}" for i in range(40)]), CLASSES, y, np.log(probs))
    frame = preds.to_frame()
    assert list(frame.columns) == ["image_id", "true", "pred", "prob_Normal", "prob_Benign",
                                   "prob_Malignant", "logit_Normal", "logit_Benign", "logit_Malignant"]
    np.testing.assert_allclose(frame.filter(like="prob_").to_numpy(), probs, rtol=1e-9)
    frame.to_csv(tmp_path / "p.csv", index=False)
    back = read_predictions(tmp_path / "p.csv")
    assert back.classes == CLASSES and (back.y_true == y).all()
    np.testing.assert_allclose(back.logits, preds.logits)
    frame.assign(true="Unknown").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="bad.csv.*Unknown"):
        read_predictions(tmp_path / "bad.csv")


def test_curve_rows_follow_sklearn_and_are_thinned():
    y, probs = random_case(9, n=2000)
    roc, pr = curve_rows(y, probs, CLASSES, max_points=50)
    for i, c in enumerate(CLASSES):
        rows = [r for r in roc if r["class"] == c]
        fpr, tpr, _ = skm.roc_curve(y == i, probs[:, i])
        assert 2 < len(rows) <= 50
        assert (rows[0]["fpr"], rows[0]["tpr"]) == (fpr[0], tpr[0])
        assert (rows[-1]["fpr"], rows[-1]["tpr"]) == (1.0, 1.0)
        assert np.trapezoid([r["tpr"] for r in rows], [r["fpr"] for r in rows]) == \
            pytest.approx(skm.roc_auc_score(y == i, probs[:, i]), abs=0.01)
        assert 2 < len([r for r in pr if r["class"] == c]) <= 50
    confusion = confusion_rows(y, probs.argmax(1), CLASSES)
    assert len(confusion) == len(y) and confusion[0] == {
        "actual": CLASSES[y[0]], "predicted": CLASSES[probs[0].argmax()]}


def test_write_plots_and_absent_class(tmp_path):
    y, probs = random_case(10, n=60)
    y[y == 1] = 0  # Benign absent: no curve for it, everything else still written
    preds = SplitPredictions(np.arange(60).astype(str), CLASSES, y, np.log(probs))
    metrics = evaluation_metrics({"test": preds})["test"]
    write_plots(preds, metrics, tmp_path)
    roc = json.loads((tmp_path / "roc.json").read_text())
    assert {r["class"] for r in roc} == {"Normal", "Malignant"}
    for name in ("pr.json", "confusion.json", "roc.png", "confusion.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_check_cache_size():
    class Cache:
        size = 64
    check_cache_size(SimpleNamespace(cache_size=64), Cache(), "c")
    with pytest.raises(ValueError, match="c: cache images are 64 px"):
        check_cache_size(SimpleNamespace(cache_size=256), Cache(), "c")
