"""Grouped stratified bootstrap: weighted metrics against sklearn/scipy, interval behaviour."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

from assurexray.evaluation.bootstrap import (
    Predictions,
    bootstrap_metrics,
    bootstrap_weights,
    group_strata,
    read_groups,
    read_predictions,
    resample_counts,
    summarize,
    weighted_metrics,
)
from assurexray.evaluation.metrics import weighted_auc
from assurexray.evaluation.predictions import SplitPredictions

CLASSES = ["Normal", "Benign", "Malignant"]


def fake_predictions(n_groups=120, views=2, noise=1.0, clustered=False, seed=0) -> Predictions:
    """Groups of ``views`` images sharing a label; probabilities informative but noisy.
    ``clustered``: the noise is drawn per group, so a group's views get the same scores."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n_groups, p=[0.5, 0.35, 0.15])
    y = np.repeat(labels, views)
    draws = rng.normal(size=(n_groups, 3))
    per_image = np.repeat(draws, views, axis=0) if clustered else rng.normal(size=(len(y), 3))
    logits = 2.0 * np.eye(3)[y] + noise * per_image
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    groups = np.repeat([f"g{i}" for i in range(n_groups)], views)
    return Predictions(np.array([f"img{i}" for i in range(len(y))]), y, probs.argmax(axis=1),
                       probs, groups)


def test_weighted_auc_matches_sklearn_with_sample_weight_and_ties():
    rng = np.random.default_rng(1)
    positive = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + 0.3 * positive, 1)  # rounding makes many ties
    weights = rng.integers(0, 4, size=(5, 300)).astype(float)
    got = weighted_auc(positive, scores, weights)
    for row, value in zip(weights, got):
        assert value == pytest.approx(roc_auc_score(positive, scores, sample_weight=row), abs=1e-12)
    assert weighted_auc(positive, scores, np.ones(300))[0] == pytest.approx(
        roc_auc_score(positive, scores), abs=1e-12)


def test_weighted_auc_undefined_without_positives():
    assert np.isnan(weighted_auc(np.zeros(4, bool), np.arange(4.0), np.ones(4))[0])


def test_weighted_metrics_match_sklearn_on_original_sample():
    p = fake_predictions()
    m = weighted_metrics(p.y_true, p.y_pred, p.probs, np.ones((1, len(p))))
    assert m["macro_auc"][0] == pytest.approx(
        roc_auc_score(p.y_true, p.probs, multi_class="ovr", average="macro"), abs=1e-12)
    assert m["balanced_accuracy"][0] == pytest.approx(balanced_accuracy_score(p.y_true, p.y_pred))
    assert m["accuracy"][0] == pytest.approx(np.mean(p.y_true == p.y_pred))
    cm = confusion_matrix(p.y_true, p.y_pred)
    for c in range(3):
        tp, fn, fp = cm[c, c], cm[c].sum() - cm[c, c], cm[:, c].sum() - cm[c, c]
        tn = cm.sum() - tp - fn - fp
        assert m["sensitivity"][0, c] == pytest.approx(tp / (tp + fn))
        assert m["specificity"][0, c] == pytest.approx(tn / (tn + fp))


def test_weights_equal_repeating_the_resampled_images():
    p = fake_predictions(n_groups=40)
    weights = bootstrap_weights(p.groups, p.y_true, n_iter=3, seed=5)
    row = weights[2].astype(int)
    idx = np.repeat(np.arange(len(p)), row)
    m = weighted_metrics(p.y_true, p.y_pred, p.probs, weights[2:3])
    assert m["macro_auc"][0] == pytest.approx(
        roc_auc_score(p.y_true[idx], p.probs[idx], multi_class="ovr"), abs=1e-12)
    assert m["accuracy"][0] == pytest.approx(np.mean(p.y_true[idx] == p.y_pred[idx]))


def test_resampling_keeps_groups_whole_and_strata_sizes():
    p = fake_predictions(n_groups=50, views=3)
    position, strata = group_strata(p.groups, p.y_true)
    counts = resample_counts(strata, n_iter=200, seed=0)
    for s in np.unique(strata):
        assert (counts[:, strata == s].sum(axis=1) == (strata == s).sum()).all()
    weights = bootstrap_weights(p.groups, p.y_true, n_iter=200, seed=0)
    assert (weights[0] == 1).all()
    # the three views of a group always share their weight
    assert (weights[1:, 0::3] == weights[1:, 1::3]).all() and (weights[1:, 0::3] == weights[1:, 2::3]).all()


def test_group_stratum_is_majority_label():
    groups = np.array(["a", "a", "a", "b", "b"])
    y = np.array([0, 0, 2, 1, 2])
    _, strata = group_strata(groups, y)
    assert strata.tolist() == [0, 2]  # b ties 1-1: the higher class


def test_perfect_classifier_gives_degenerate_interval_at_one():
    p = fake_predictions()
    perfect = Predictions(p.image_ids, p.y_true, p.y_true, np.eye(3)[p.y_true], p.groups)
    out = bootstrap_metrics(perfect, CLASSES, n_iter=200, ci_level=0.95, seed=0)
    for key in ("macro_auc", "accuracy", "balanced_accuracy"):
        assert (out[key]["value"], out[key]["ci_low"], out[key]["ci_high"]) == (1.0, 1.0, 1.0)
        assert out[key]["valid_resamples"] == 200
    assert out["auc"]["Malignant"]["ci_low"] == 1.0


def test_same_seed_same_interval_other_seed_other_interval():
    p = fake_predictions()
    a = bootstrap_metrics(p, CLASSES, n_iter=300, ci_level=0.95, seed=3)
    b = bootstrap_metrics(p, CLASSES, n_iter=300, ci_level=0.95, seed=3)
    c = bootstrap_metrics(p, CLASSES, n_iter=300, ci_level=0.95, seed=4)
    assert a == b
    assert a["macro_auc"] != c["macro_auc"]
    assert a["macro_auc"]["ci_low"] < a["macro_auc"]["value"] < a["macro_auc"]["ci_high"]


def test_grouped_interval_wider_than_image_interval_on_clustered_data():
    # 10 views per patient with identical scores: only 60 independent units, not 600.
    p = fake_predictions(n_groups=60, views=10, noise=2.0, clustered=True, seed=2)
    image_level = Predictions(p.image_ids, p.y_true, p.y_pred, p.probs, p.image_ids)
    grouped = bootstrap_metrics(p, CLASSES, n_iter=500, ci_level=0.95, seed=0)
    images = bootstrap_metrics(image_level, CLASSES, n_iter=500, ci_level=0.95, seed=0)
    for key in ("macro_auc", "accuracy"):
        width = grouped[key]["ci_high"] - grouped[key]["ci_low"]
        naive = images[key]["ci_high"] - images[key]["ci_low"]
        assert width > 1.8 * naive, key


def test_image_level_percentile_interval_agrees_with_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    n_iter = 4000
    counts = resample_counts(np.zeros(300, int), n_iter, seed=1)  # one stratum, groups = images
    means = np.concatenate([[x.mean()], counts @ x / 300])
    ours = summarize(means, 0.95)
    ref = stats.bootstrap((x,), np.mean, n_resamples=n_iter, confidence_level=0.95,
                          method="percentile", rng=np.random.default_rng(1)).confidence_interval
    assert ours["ci_low"] == pytest.approx(ref.low, abs=0.015)
    assert ours["ci_high"] == pytest.approx(ref.high, abs=0.015)


def test_undefined_resamples_are_excluded_and_counted():
    # The only malignant image sits in a group whose majority is Normal: a resample that
    # misses that group has no malignant positive, so its malignant AUC is undefined.
    p = fake_predictions(n_groups=40, views=3)
    y = np.where(p.y_true == 2, 1, p.y_true)
    y[np.flatnonzero(y == 0)[0]] = 2
    mixed = Predictions(p.image_ids, y, p.y_pred, p.probs, p.groups)
    weights = bootstrap_weights(mixed.groups, y, n_iter=300, seed=0)
    expected = int((weights[1:, y == 2] > 0).sum())
    out = bootstrap_metrics(mixed, CLASSES, n_iter=300, ci_level=0.95, seed=0)
    assert 0 < expected < 300
    assert out["auc"]["Malignant"]["valid_resamples"] == expected
    assert out["macro_auc"]["valid_resamples"] == expected
    assert out["accuracy"]["valid_resamples"] == 300


def test_absent_class_gives_null_auc_not_an_error():
    p = fake_predictions()
    keep = (p.y_true != 2) & (p.y_pred != 2)
    out = bootstrap_metrics(p.subset(keep), CLASSES, n_iter=50, ci_level=0.95, seed=0)
    assert out["auc"]["Malignant"] == {"value": None, "ci_low": None, "ci_high": None,
                                       "valid_resamples": 0}
    assert out["macro_auc"]["value"] is None
    assert out["balanced_accuracy"]["value"] == pytest.approx(
        balanced_accuracy_score(p.y_true[keep], p.y_pred[keep]))


def test_read_predictions_attaches_groups_and_names_bad_file(tmp_path):
    groups_csv = tmp_path / "groups.csv"
    pd.DataFrame({"image_id": ["a", "b"], "group": ["g1", "g1"]}).to_csv(groups_csv, index=False)
    groups = read_groups(groups_csv)
    path = tmp_path / "test.csv"
    logits = np.log([[0.2, 0.5, 0.3], [0.7, 0.2, 0.1]])
    table = SplitPredictions(np.array(["a", "b"]), CLASSES, np.array([2, 0]), logits)
    table.to_frame().to_csv(path, index=False)
    p = read_predictions(path, CLASSES, groups)
    assert p.y_true.tolist() == [2, 0] and p.y_pred.tolist() == [1, 0]
    assert p.probs == pytest.approx(np.exp(logits))
    assert p.groups.tolist() == ["g1", "g1"]
    with pytest.raises(ValueError, match="test.csv.*differ"):
        read_predictions(path, ["Normal", "Tumour"], groups)
    table.to_frame().assign(image_id=["a", "zz"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="test.csv.*no patient group"):
        read_predictions(path, CLASSES, groups)
