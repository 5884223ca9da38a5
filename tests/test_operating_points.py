"""Operating points: thresholds from hand-made validation scores, applied to test."""
import numpy as np
import pytest

from assurexray.evaluation.bootstrap import Predictions
from assurexray.evaluation.operating_points import (
    BinaryTask,
    binary_rates,
    binary_tasks,
    choose_thresholds,
    operating_points,
)

CLASSES = ["Normal", "Benign", "Malignant"]

# Validation: 10 positives, 10 negatives, all scores distinct. By hand (positive if >= t):
#   t=0.65: sens 0.6, spec 1.0 | t=0.5: sens 0.9, spec 0.9 (max J = 0.8) | t=0.2: sens 1.0, spec 0.4
VAL_POS = [0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.2]
VAL_NEG = [0.62, 0.45, 0.4, 0.35, 0.3, 0.25, 0.15, 0.1, 0.05, 0.01]


def val_arrays():
    return (np.array([True] * 10 + [False] * 10), np.array(VAL_POS + VAL_NEG))


def malignant_predictions(malignant_scores, is_malignant, benign=None) -> Predictions:
    """3-class predictions whose P(Malignant) is the given score; non-malignant images are
    Normal unless ``benign`` marks them; one patient group per pair of images."""
    s = np.asarray(malignant_scores, float)
    y = np.where(is_malignant, 2, 0)
    if benign is not None:
        y = np.where(benign, 1, y)
    probs = np.column_stack([(1 - s) / 2, (1 - s) / 2, s])
    n = len(s)
    return Predictions(np.array([f"i{i}" for i in range(n)]), y, probs.argmax(axis=1), probs,
                       np.array([f"g{i // 2}" for i in range(n)]))


def test_thresholds_from_known_validation_scores():
    positive, scores = val_arrays()
    got = choose_thresholds(positive, scores, sensitivity_target=0.95, specificity_target=0.95)
    assert got["youden"]["threshold"] == 0.5
    assert got["sensitivity_target"] == {"target": 0.95, "threshold": 0.2, "note": None}
    assert got["specificity_target"] == {"target": 0.95, "threshold": 0.65, "note": None}
    # a target met exactly is met (0.9 of 10 is not lost to float rounding)
    at_90 = choose_thresholds(positive, scores, 0.9, 0.9)
    assert at_90["sensitivity_target"]["threshold"] == 0.5
    assert at_90["specificity_target"]["threshold"] == 0.5


def test_unreachable_specificity_target_gets_a_note():
    positive = np.array([True, True, False, False, False])
    scores = np.array([0.5, 0.4, 0.9, 0.9, 0.1])  # two of three negatives tie at the top
    got = choose_thresholds(positive, scores, 0.9, 0.9)
    assert got["specificity_target"]["threshold"] == 0.9
    assert "not reachable" in got["specificity_target"]["note"]
    assert got["sensitivity_target"]["note"] is None


def test_validation_without_positives_gives_no_threshold():
    got = choose_thresholds(np.zeros(4, bool), np.arange(4.0), 0.9, 0.9)
    assert all(v["threshold"] is None and "no positive" in v["note"] for v in got.values())


def test_binary_rates_by_hand():
    positive = np.array([True, True, True, False, False])
    predicted = np.array([True, True, False, True, False])
    rates = binary_rates(positive, predicted, np.array([[1, 1, 1, 1, 1], [2, 0, 1, 0, 1]], float))
    assert [rates[k][0] for k in ("sensitivity", "specificity", "ppv", "npv")] == \
        pytest.approx([2 / 3, 1 / 2, 2 / 3, 1 / 2])
    # second row: tp 2, fn 1, fp 0, tn 1
    assert [rates[k][1] for k in ("sensitivity", "specificity", "ppv", "npv")] == \
        pytest.approx([2 / 3, 1.0, 1.0, 1 / 2])


def test_binary_tasks_find_classes_by_name():
    tasks = binary_tasks(CLASSES)
    assert tasks["malignant_vs_rest"] == BinaryTask((2,), 2, False, "P(Malignant)")
    assert tasks["tumour_vs_normal"] == BinaryTask((1, 2), 0, True, "1 - P(Normal)")
    assert binary_tasks(["Malignant", "Benign", "Normal"])["malignant_vs_rest"].positive == (0,)
    two = binary_tasks(["Benign", "Cancer"])
    assert two["malignant_vs_rest"].positive == (1,)
    assert "needs a 'Normal' class" in two["tumour_vs_normal"]
    with pytest.raises(ValueError, match="at least 2 classes"):
        binary_tasks(["Normal"])


def test_tumour_score_is_one_minus_normal():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    task = binary_tasks(CLASSES)["tumour_vs_normal"]
    assert task.scores(probs) == pytest.approx(probs[:, 1] + probs[:, 2])
    assert task.labels(np.array([0, 1, 2])).tolist() == [False, True, True]


def test_validation_thresholds_applied_to_test():
    positive, scores = val_arrays()
    val = malignant_predictions(scores, positive)
    rng = np.random.default_rng(0)
    test_pos = rng.random(200) < 0.4
    test_scores = np.clip(rng.normal(0.35 + 0.3 * test_pos, 0.15), 0, 1)
    test = malignant_predictions(test_scores, test_pos)
    out = operating_points(val, test, CLASSES, 0.95, 0.95, n_iter=300, ci_level=0.95, seed=0)
    youden = out["malignant_vs_rest"]["youden"]
    assert youden["threshold"] == 0.5
    assert youden["val"] == pytest.approx({"sensitivity": 0.9, "specificity": 0.9, "ppv": 0.9,
                                           "npv": 0.9})
    called = test_scores >= 0.5
    expected = {"sensitivity": called[test_pos].mean(), "specificity": (~called[~test_pos]).mean(),
                "ppv": test_pos[called].mean(), "npv": (~test_pos[~called]).mean()}
    for rate, value in expected.items():
        interval = youden["test"][rate]
        assert interval["value"] == pytest.approx(value)
        assert interval["ci_low"] < value < interval["ci_high"]
        assert interval["valid_resamples"] == 300
    assert out["malignant_vs_rest"]["specificity_target"]["threshold"] == 0.65
    assert out["tumour_vs_normal"]["score"] == "1 - P(Normal)"


def test_undefined_ppv_is_null_and_missing_validation_class_is_noted():
    positive, scores = val_arrays()
    val = malignant_predictions(scores, positive)
    test = malignant_predictions(np.full(20, 0.01), np.arange(20) < 5)  # nobody called positive
    out = operating_points(val, test, CLASSES, 0.9, 0.9, n_iter=50, ci_level=0.95, seed=0)
    ppv = out["malignant_vs_rest"]["youden"]["test"]["ppv"]
    assert ppv == {"value": None, "ci_low": None, "ci_high": None, "valid_resamples": 0}
    assert out["malignant_vs_rest"]["youden"]["test"]["sensitivity"]["value"] == 0.0

    no_malignant = malignant_predictions(scores, np.zeros(20, bool), benign=positive)
    out = operating_points(no_malignant, test, CLASSES, 0.9, 0.9, n_iter=50, ci_level=0.95, seed=0)
    youden = out["malignant_vs_rest"]["youden"]
    assert youden["threshold"] is None and "no positive" in youden["note"]
    assert youden["test"]["sensitivity"]["value"] is None
    assert out["tumour_vs_normal"]["youden"]["threshold"] is not None
