"""Patient-grouped intervals of the pointing game, energy, IoU, ECE and ROAD (issue 18, item 5).

For each interval, on small constructed sets: it contains its point estimate; grouping matters
(the same images duplicated inside their patient groups give a wider interval when grouped
than when every image is taken as independent); a handful of images gives an interval of
non-zero width; a single group gives none (its resamples could only repeat it).
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from assurexray.evaluation.bootstrap import GroupedResampling, weighted_mean
from assurexray.evaluation.calibration import ece_interval, expected_calibration_error, weighted_ece
from assurexray.explain import cam
from assurexray.explain import localization as loc
from assurexray.reporting.sections import vs_chance

COPIES = 5  # views per patient in the duplicated sets


def resampling(groups, strata=None, iterations=2000, level=0.95, seed=0) -> GroupedResampling:
    groups = np.asarray(groups)
    strata = np.zeros(len(groups), int) if strata is None else np.asarray(strata)
    return GroupedResampling(groups, strata, iterations, level, seed)


def duplicated(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row of ``values`` repeated COPIES times: (values, patient groups, image ids)."""
    rows = np.repeat(values, COPIES, axis=0)
    groups = np.repeat([f"p{i}" for i in range(len(values))], COPIES)
    return rows, groups, np.array([f"img{i}" for i in range(len(rows))])


def width(interval: dict) -> float:
    return interval["ci_high"] - interval["ci_low"]


def contains_point(interval: dict) -> bool:
    return interval["ci_low"] <= interval["value"] <= interval["ci_high"]


# --------------------------------------------------------------------------- grouped mean

def test_weighted_mean_of_a_row_of_ones_is_the_mean():
    values = np.array([0.1, 0.5, 0.9])
    out = weighted_mean(values, np.array([[1.0, 1, 1], [2, 0, 1], [0, 0, 0]]))
    assert out[0] == pytest.approx(values.mean())
    assert out[1] == pytest.approx((0.2 + 0.9) / 3) and np.isnan(out[2])


def test_mean_interval_contains_the_mean_and_widens_when_images_share_a_patient():
    values, groups, ids = duplicated(np.random.default_rng(0).random(12))
    grouped = resampling(groups).mean_interval(values)
    independent = resampling(ids).mean_interval(values)
    assert grouped["value"] == pytest.approx(values.mean()) and contains_point(grouped)
    assert grouped["n"] == 60 and grouped["n_groups"] == 12 and independent["n_groups"] == 60
    assert width(grouped) > 1.8 * width(independent)


def test_mean_interval_on_three_images_has_width_and_one_group_has_none():
    tiny = resampling(["a", "b", "c"]).mean_interval(np.array([0.1, 0.4, 0.8]))
    assert contains_point(tiny) and width(tiny) > 0
    one = resampling(["a", "a"]).mean_interval(np.array([0.1, 0.4]))
    assert one["value"] == pytest.approx(0.25) and one["ci_low"] is None and one["ci_high"] is None
    empty = resampling([]).mean_interval(np.array([]))
    assert empty["value"] is None and empty["n"] == 0


# --------------------------------------------------------------------------- localization

def scores_of(hits, energy, chance=0.1, iou_polygon=None) -> list[loc.LocalizationScore]:
    polygon = [float("nan")] * len(hits) if iou_polygon is None else iou_polygon
    return [loc.LocalizationScore(pointing=float(h), energy=float(e), chance=chance, iou_box=float(e),
                                  iou_polygon=float(p), empty_cam=False)
            for h, e, p in zip(hits, energy, polygon)]


def base_localization(n=30, seed=1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random(n) < 0.3).astype(float), rng.random(n) * 0.4


def test_pointing_game_gets_the_exact_grouped_interval_with_its_count_and_n():
    hits, energy = base_localization()
    rows, groups, ids = duplicated(np.column_stack([hits, energy]))
    hits_d, energy_d = rows.T
    grouped = loc.summarize(scores_of(hits_d, energy_d), resampling(groups))["intervals"]
    independent = loc.summarize(scores_of(hits_d, energy_d), resampling(ids))["intervals"]
    pointing = grouped["pointing_game"]
    assert pointing["value"] == pytest.approx(hits.mean()) and contains_point(pointing)
    assert pointing["count"] == int(hits_d.sum()) and pointing["n"] == 150
    assert pointing["n_groups"] == 30 and pointing["n_effective"] == pytest.approx(30, rel=0.05)
    for key in ("pointing_game", "energy_pointing", "iou_box", "pointing_vs_chance"):
        assert contains_point(grouped[key]), key
        assert width(grouped[key]) > 1.5 * width(independent[key]), key


def test_localization_intervals_on_two_images_have_width():
    out = loc.summarize(scores_of([1, 1], [0.2, 0.6], iou_polygon=[0.3, 0.5]),
                        resampling(["a", "b"]))["intervals"]
    assert out["pointing_game"]["ci_low"] < 1.0 == out["pointing_game"]["ci_high"]
    for key in ("energy_pointing", "iou_box", "iou_polygon"):
        assert contains_point(out[key]) and width(out[key]) > 0, key


def test_every_subset_carries_intervals_over_its_own_images():
    hits, energy = base_localization(n=8)
    groups = np.array(["p0", "p0", "p1", "p2", "p2", "p3", "p4", "p5"])
    true = ["Benign"] * 5 + ["Malignant"] * 3
    correct = [True, False] * 4
    out = loc.grouped_summary(scores_of(hits, energy, iou_polygon=[0.5] * 4 + [np.nan] * 4),
                              true, correct, ["Normal", "Benign", "Malignant"],
                              resampling(groups, [1] * 5 + [2] * 3))
    assert out["by_class"]["Malignant"]["intervals"]["pointing_game"]["n"] == 3
    assert out["by_class"]["Malignant"]["intervals"]["iou_polygon"] is None
    assert out["correct"]["intervals"]["energy_pointing"]["n_groups"] == 4   # p0 p1 p2 p4
    assert out["overall"]["intervals"]["iou_polygon"]["n"] == 4
    empty = loc.grouped_summary(scores_of(hits, energy), true, [True] * 8,
                                ["Normal", "Benign", "Malignant"], resampling(groups))["incorrect"]
    assert empty["n"] == 0 and empty["intervals"] is None
    assert "intervals" not in loc.summarize(scores_of(hits, energy))   # validation: no groups


def test_above_chance_is_claimed_only_when_the_ratio_interval_clears_one():
    def summary(ratio_low):
        return {"n": 20, "pointing_game": 0.3, "chance": 0.1,
                "intervals": {"pointing_vs_chance": {"value": 3.0, "ci_low": ratio_low,
                                                     "ci_high": 6.0}}}
    assert vs_chance(summary(1.4)) == "above chance (x3.00, interval 1.40-6.00)"
    assert vs_chance(summary(0.8)).startswith("not shown above chance (x3.00, interval 0.80")


# --------------------------------------------------------------------------- ECE

def calibration_set(n=40, seed=3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    probs = softmax(2.5 * np.eye(3)[y] + 1.5 * rng.normal(size=(n, 3)), axis=1)
    return probs, y


def test_weighted_ece_of_ones_is_the_ece_and_weights_count_images():
    probs, y = calibration_set()
    weights = np.vstack([np.ones(len(y)), np.r_[np.full(20, 2.0), np.zeros(20)]])
    ece = weighted_ece(probs, y, 10, weights)
    assert ece[0] == pytest.approx(expected_calibration_error(probs, y, 10))
    doubled = np.repeat(np.arange(20), 2)
    assert ece[1] == pytest.approx(expected_calibration_error(probs[doubled], y[doubled], 10))


def test_ece_interval_contains_the_ece_and_widens_when_images_share_a_patient():
    probs, y = calibration_set()
    probs_d, groups, ids = duplicated(probs)
    y_d = np.repeat(y, COPIES)
    grouped = ece_interval(probs_d, y_d, 10, resampling(groups, y_d))
    independent = ece_interval(probs_d, y_d, 10, resampling(ids, y_d))
    assert grouped["value"] == pytest.approx(expected_calibration_error(probs, y, 10))
    assert contains_point(grouped) and grouped["n_groups"] == 40
    assert width(grouped) > 1.5 * width(independent)


def test_ece_interval_on_four_images_has_width():
    probs, y = calibration_set(n=4, seed=5)
    tiny = ece_interval(probs, y, 10, resampling(["a", "b", "c", "d"], y))
    assert contains_point(tiny) and width(tiny) > 0


# --------------------------------------------------------------------------- ROAD

def road_of(per_image: np.ndarray) -> dict[str, np.ndarray]:
    """ROAD curves (two percentiles) whose per-image combined score is ``per_image``."""
    return {"morf": np.tile(-2 * per_image, (2, 1)), "lerf": np.zeros((2, len(per_image)))}


def test_road_interval_resamples_patients_not_images():
    per_image, groups, ids = duplicated(np.random.default_rng(4).random(10) * 0.3)
    grouped = cam.road_summary(road_of(per_image), [50, 80], resampling(groups))
    independent = cam.road_summary(road_of(per_image), [50, 80], resampling(ids))
    assert grouped["combined"] == pytest.approx(per_image.mean()) and grouped["n_groups"] == 10
    assert grouped["combined_ci_low"] <= grouped["combined"] <= grouped["combined_ci_high"]
    assert (grouped["combined_ci_high"] - grouped["combined_ci_low"]
            > 1.8 * (independent["combined_ci_high"] - independent["combined_ci_low"]))


def test_road_interval_on_two_patients_has_width_and_one_has_none():
    two = cam.road_summary(road_of(np.array([0.1, 0.3])), [50, 80], resampling(["a", "b"]))
    assert two["combined_ci_low"] < two["combined"] < two["combined_ci_high"]
    one = cam.road_summary(road_of(np.array([0.1, 0.3])), [50, 80], resampling(["a", "a"]))
    assert one["combined_ci_low"] is None and one["n"] == 2 and one["n_groups"] == 1
