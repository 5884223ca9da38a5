"""Operating points: thresholds from hand-made validation scores, applied to test."""
import json

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import binomtest

from assurexray.evaluation import metrics, operating_points
from assurexray.evaluation.bootstrap import Predictions
from assurexray.evaluation.operating_points import (
    BinaryTask,
    OperatingPointsError,
    binary_tasks,
    choose_thresholds,
    decide,
    evaluate_operating_points,
    fit_operating_points,
    read_fitted,
    read_test_rates,
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


def test_one_binary_rates_implementation():
    # issue 9 item 19: operating points count with the metrics module's rates, no copy
    assert operating_points.binary_rates is metrics.binary_rates


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


def fit(val: Predictions, sens=0.95, spec=0.95, decision="youden") -> dict:
    return fit_operating_points(val.y_true, val.probs, CLASSES, sens, spec, decision, "calibrated")


def test_validation_thresholds_applied_to_test():
    positive, scores = val_arrays()
    val = malignant_predictions(scores, positive)
    rng = np.random.default_rng(0)
    test_pos = rng.random(200) < 0.4
    test_scores = np.clip(rng.normal(0.35 + 0.3 * test_pos, 0.15), 0, 1)
    test = malignant_predictions(test_scores, test_pos)
    fitted = fit(val)
    assert json.loads(json.dumps(fitted)) == fitted          # plain data, for checkpoint meta
    out = evaluate_operating_points(fitted, test, CLASSES, ci_level=0.95)
    task = out["malignant_vs_rest"]
    assert (task["scale"], task["decision"], task["positive"]) == ("calibrated", "youden",
                                                                   ["Malignant"])
    youden = task["youden"]
    assert youden["threshold"] == 0.5
    assert youden["val"] == pytest.approx({"sensitivity": 0.9, "specificity": 0.9, "ppv": 0.9,
                                           "npv": 0.9, "n_positive": 10, "n_negative": 10})
    called = test_scores >= 0.5
    expected = {"sensitivity": (called, test_pos), "specificity": (~called, ~test_pos),
                "ppv": (test_pos, called), "npv": (~test_pos, ~called)}
    for rate, (hit, among) in expected.items():
        interval = youden["test"][rate]
        assert (interval["count"], interval["n"]) == (hit[among].sum(), among.sum()), rate
        assert interval["value"] == pytest.approx(hit[among].mean())
        assert interval["ci_low"] < interval["value"] < interval["ci_high"]
        # pairs of images share a group: never narrower than the independent-image interval
        exact = binomtest(int(hit[among].sum()), int(among.sum())).proportion_ci(0.95, "exact")
        assert interval["ci_low"] <= exact.low + 1e-12 and interval["ci_high"] >= exact.high - 1e-12
    assert task["specificity_target"]["threshold"] == 0.65
    assert out["tumour_vs_normal"]["score"] == "1 - P(Normal)"


def test_undefined_ppv_is_null_and_missing_validation_class_is_noted():
    positive, scores = val_arrays()
    val = malignant_predictions(scores, positive)
    test = malignant_predictions(np.full(20, 0.01), np.arange(20) < 5)  # nobody called positive
    out = evaluate_operating_points(fit(val, 0.9, 0.9), test, CLASSES, 0.95)
    youden = out["malignant_vs_rest"]["youden"]["test"]
    assert youden["ppv"]["value"] is None and youden["ppv"]["n"] == 0
    assert youden["sensitivity"]["value"] == 0.0 and youden["sensitivity"]["ci_high"] > 0

    no_malignant = malignant_predictions(scores, np.zeros(20, bool), benign=positive)
    out = evaluate_operating_points(fit(no_malignant, 0.9, 0.9), test, CLASSES, 0.95)
    youden = out["malignant_vs_rest"]["youden"]
    assert youden["threshold"] is None and "no positive" in youden["note"]
    assert youden["test"]["sensitivity"]["value"] is None
    assert out["tumour_vs_normal"]["youden"]["threshold"] is not None


def test_thresholds_are_fitted_on_the_calibrated_scale_predict_uses():
    # Temperature scaling is not monotone in P(Malignant) across images (K > 2), so a
    # threshold fitted on raw probabilities is not the same decision on calibrated ones.
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) * 2 + 1.5 * np.eye(3)[y]
    temperature = 2.5
    calibrated = softmax(logits / temperature, axis=1)
    fitted = fit_operating_points(y, calibrated, CLASSES, 0.9, 0.9, "sensitivity_target",
                                  "calibrated")
    raw = fit_operating_points(y, softmax(logits, axis=1), CLASSES, 0.9, 0.9,
                               "sensitivity_target", "raw")
    point = fitted["malignant_vs_rest"]["sensitivity_target"]
    assert point["threshold"] != raw["malignant_vs_rest"]["sensitivity_target"]["threshold"]
    # the shipped decision reproduces the validation rates on the calibrated probabilities
    decisions = [decide(fitted, p, CLASSES)["malignant_vs_rest"] for p in calibrated]
    called = np.array([d["positive"] for d in decisions])
    assert called[y == 2].mean() == pytest.approx(point["val"]["sensitivity"])
    assert (~called[y != 2]).mean() == pytest.approx(point["val"]["specificity"])
    first = decisions[0]
    assert first["threshold"] == point["threshold"] and first["scale"] == "calibrated"
    assert first["operating_point"] == "sensitivity_target"
    assert first["val_sensitivity"] == point["val"]["sensitivity"] >= 0.9
    tumour = decide(fitted, calibrated[0], CLASSES)["tumour_vs_normal"]
    assert tumour["score"] == pytest.approx(1 - calibrated[0, 0])


def test_fitted_points_round_trip_through_the_calibration_file(tmp_path):
    positive, scores = val_arrays()
    fitted = fit(malignant_predictions(scores, positive))
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"temperature": 1.7, "operating_points": fitted}))
    assert read_fitted(path, CLASSES) == (1.7, fitted)
    with pytest.raises(OperatingPointsError, match="not in"):
        read_fitted(path, ["Normal", "Benign", "Cancer"])
    path.write_text("{truncated")
    with pytest.raises(OperatingPointsError, match="calibration.json: not JSON"):
        read_fitted(path, CLASSES)
    path.write_text(json.dumps({"temperature": 1.7}))
    with pytest.raises(OperatingPointsError, match="calibration.json.*operating_points.*calibrate"):
        read_fitted(path, CLASSES)
    with pytest.raises(ValueError, match="decision"):
        fit_operating_points(np.zeros(3, int), np.ones((3, 3)) / 3, CLASSES, 0.9, 0.9, "best",
                             "calibrated")


def test_decisions_quote_the_test_rates_analyze_measured_at_their_threshold(tmp_path):
    positive, scores = val_arrays()
    fitted = fit(malignant_predictions(scores, positive))
    rng = np.random.default_rng(1)
    test_pos = rng.random(120) < 0.4
    test = malignant_predictions(np.clip(rng.normal(0.35 + 0.3 * test_pos, 0.15), 0, 1), test_pos)
    measured = evaluate_operating_points(fitted, test, CLASSES, ci_level=0.9)
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps({"ci_level": 0.9, "methods": {"operating_points": "exact"},
                                "operating_points": measured}))
    rates = read_test_rates(path, fitted)
    decision = decide(fitted, np.array([0.1, 0.2, 0.7]), CLASSES, rates)["malignant_vs_rest"]
    youden = measured["malignant_vs_rest"]["youden"]
    assert decision["positive"] and decision["val_sensitivity"] == youden["val"]["sensitivity"]
    quoted = decision["test_rates"]
    assert quoted["sensitivity"] == youden["test"]["sensitivity"]
    assert quoted["specificity"] == youden["test"]["specificity"]
    assert quoted["sensitivity"]["ci_low"] < quoted["sensitivity"]["value"]
    assert (quoted["ci_level"], quoted["source"]) == (0.9, str(path))
    assert "optimistic" in decision["rates_note"]
    assert decide(fitted, np.array([0.1, 0.2, 0.7]), CLASSES)["malignant_vs_rest"][
        "test_rates"] is None
    # another checkpoint's analysis (other thresholds) is refused, naming the file
    refitted = fit(malignant_predictions(scores[::-1], positive))
    with pytest.raises(OperatingPointsError, match="analysis.json: malignant_vs_rest was "
                                                   "measured on test at threshold"):
        read_test_rates(path, refitted)
    path.write_text(json.dumps({"temperature": 1.0}))
    with pytest.raises(OperatingPointsError, match="not the analyze stage's metrics file"):
        read_test_rates(path, fitted)
