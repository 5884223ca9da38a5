"""Grouped stratified bootstrap: weighted metrics against sklearn/scipy, interval behaviour."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.stats import binomtest
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
from assurexray.evaluation.metrics import classification_metrics, weighted_auc
from assurexray.evaluation.predictions import SplitPredictions
from assurexray.evaluation.proportions import clopper_pearson, effective_n, proportion_interval

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


def test_point_estimates_match_sklearn():
    p = fake_predictions()
    m = weighted_metrics(p.y_true, p.y_pred, p.probs, np.ones((1, len(p))))
    assert m["macro_auc"][0] == pytest.approx(
        roc_auc_score(p.y_true, p.probs, multi_class="ovr", average="macro"), abs=1e-12)
    assert m["balanced_accuracy"][0] == pytest.approx(balanced_accuracy_score(p.y_true, p.y_pred))
    out = bootstrap_metrics(p, CLASSES, n_iter=20, ci_level=0.95, seed=0)
    assert out["accuracy"]["value"] == pytest.approx(np.mean(p.y_true == p.y_pred))
    assert (out["accuracy"]["count"], out["accuracy"]["n"]) == ((p.y_true == p.y_pred).sum(), len(p))
    cm = confusion_matrix(p.y_true, p.y_pred)
    for c, name in enumerate(CLASSES):
        tp, fn, fp = cm[c, c], cm[c].sum() - cm[c, c], cm[:, c].sum() - cm[c, c]
        tn = cm.sum() - tp - fn - fp
        sens, spec = out["sensitivity"][name], out["specificity"][name]
        assert (sens["value"], sens["count"], sens["n"]) == (pytest.approx(tp / (tp + fn)), tp, tp + fn)
        assert (spec["value"], spec["count"], spec["n"]) == (pytest.approx(tn / (tn + fp)), tn, tn + fp)


def test_one_macro_auc_definition_for_evaluate_and_bootstrap():
    # issue 9 item 8: evaluate.json (metrics) and analysis.json (bootstrap) use one function
    p = fake_predictions()
    full = bootstrap_metrics(p, CLASSES, n_iter=20, ci_level=0.95, seed=0)
    assert full["macro_auc"]["value"] == pytest.approx(
        classification_metrics(p.y_true, p.probs, CLASSES)["macro_auc"], abs=1e-12)
    no_benign = p.subset(p.y_true != 1)
    evaluated = classification_metrics(no_benign.y_true, no_benign.probs, CLASSES)
    analysed = bootstrap_metrics(no_benign, CLASSES, n_iter=20, ci_level=0.95, seed=0)
    assert np.isnan(evaluated["macro_auc"]) and analysed["macro_auc"]["value"] is None


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


def test_perfect_classifier_proportions_get_an_honest_interval_with_n():
    # issue 9 item 7: 1.0 on a finite sample is not certainty (was "1.0 (1.0-1.0)")
    p = fake_predictions()
    perfect = Predictions(p.image_ids, p.y_true, p.y_true, np.eye(3)[p.y_true], p.groups)
    out = bootstrap_metrics(perfect, CLASSES, n_iter=200, ci_level=0.95, seed=0)
    malignant = out["sensitivity"]["Malignant"]
    for interval in (out["accuracy"], malignant, out["specificity"]["Normal"]):
        assert interval["value"] == interval["ci_high"] == 1.0
        assert interval["ci_low"] < 1.0 and interval["n"] == interval["count"] > 0
    n_groups = len(set(p.groups[p.y_true == 2]))
    assert malignant["n_groups"] == n_groups and malignant["n_effective"] == n_groups
    # 2 views per group, all agreeing: the interval of n_groups independent successes
    assert malignant["ci_low"] == pytest.approx(
        binomtest(n_groups, n_groups).proportion_ci(0.95, "exact").low)


def test_perfect_auc_on_few_patients_gets_an_exact_bound_not_zero_width():
    """An AUC of 1 on 15 malignant images from 8 patients was reported as 1.0 (1.0-1.0)."""
    p = fake_predictions(n_groups=60)
    perfect = Predictions(p.image_ids, p.y_true, p.y_true, np.eye(3)[p.y_true], p.groups)
    out = bootstrap_metrics(perfect, CLASSES, n_iter=200, ci_level=0.95, seed=0)
    for interval in (out["macro_auc"], *out["auc"].values()):
        assert interval["value"] == interval["ci_high"] == 1.0 and interval["ci_low"] < 1.0
    smaller = min(len(set(p.groups[p.y_true == 2])), len(set(p.groups[p.y_true != 2])))
    assert out["auc"]["Malignant"]["ci_low"] == pytest.approx(
        binomtest(smaller, smaller).proportion_ci(0.95, "exact").low)
    noisy = bootstrap_metrics(p, CLASSES, n_iter=200, ci_level=0.95, seed=0)
    assert "boundary" not in noisy["auc"]["Malignant"]  # an ordinary AUC keeps its percentiles


def test_clopper_pearson_equals_scipy_exact():
    for n in (1, 7, 15, 60):
        for x in range(n + 1):
            low, high = clopper_pearson(x, n, 0.95)
            ref = binomtest(x, n).proportion_ci(0.95, "exact")
            assert (low, high) == (pytest.approx(ref.low, abs=1e-10), pytest.approx(ref.high, abs=1e-10))


def test_one_image_per_group_is_the_plain_exact_interval():
    hits = np.arange(40) % 5 != 0
    assert effective_n(hits, np.arange(40)) == pytest.approx(40)
    out = proportion_interval(hits, np.arange(40), 0.95)
    ref = binomtest(32, 40).proportion_ci(0.95, "exact")
    assert (out["ci_low"], out["ci_high"]) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert (out["count"], out["n"], out["n_groups"]) == (32, 40, 40)


def coverage(p: float, n_groups: int, views: int, icc: float, grouped: bool, seed: int = 0,
             reps: int = 400) -> tuple[float, float]:
    """(empirical coverage of the 95% interval, narrowest width) over ``reps`` simulated
    datasets: per group a success rate drawn around p (intra-group correlation ``icc``)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), views)
    units = groups if grouped else np.arange(len(groups))
    covered, narrowest = 0, 1.0
    for _ in range(reps):
        if icc > 0:
            rates = rng.beta(p * (1 / icc - 1), (1 - p) * (1 / icc - 1), n_groups)[groups]
        else:
            rates = np.full(len(groups), p)
        out = proportion_interval(rng.random(len(groups)) < rates, units, 0.95)
        covered += out["ci_low"] <= p <= out["ci_high"]
        narrowest = min(narrowest, out["ci_high"] - out["ci_low"])
    return covered / reps, narrowest


def test_interval_covers_a_rate_near_one_on_fifteen_images():
    # 400 datasets of 15 independent images with a true sensitivity of 0.97: the percentile
    # bootstrap gave "1.0 (1.0-1.0)" in 63% of them (every image positive).
    rate, narrowest = coverage(0.97, n_groups=15, views=1, icc=0.0, grouped=True)
    assert rate >= 0.93 and narrowest > 0


def test_grouped_interval_covers_clustered_data_where_image_level_does_not():
    # 30 patients x 3 views with strongly correlated views (ICC 0.5), true rate 0.9
    grouped, narrowest = coverage(0.9, n_groups=30, views=3, icc=0.5, grouped=True, seed=1)
    naive, _ = coverage(0.9, n_groups=30, views=3, icc=0.5, grouped=False, seed=1)
    assert grouped >= 0.93 and narrowest > 0
    assert naive < 0.92


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
