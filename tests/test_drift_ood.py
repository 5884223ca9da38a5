"""Drift and out-of-distribution checks on a twin: error rates over repeated windows, OOD AUROC."""
from __future__ import annotations

import numpy as np
import pytest

from assurexray.data import btxrd
from assurexray.data.imageio import read_image
from assurexray.data.ood_sets import FAR_SETS, corrupted, generate_sets
from assurexray.data.synthetic.writer import generate_twin
from assurexray.inference.classifier import Classifier
from assurexray.inference.drift import mmd_test, psi
from assurexray.inference.monitoring import build_reference, drift_error_rates, ood_evaluation, summarize
from assurexray.inference.reference import ReferenceError, load_reference, save_reference
from assurexray.params import OodParams, ReferenceParams
from assurexray.training.checkpoint import load_checkpoint
from test_predict import make_checkpoint

WINDOW, WINDOWS, ALPHA = 40, 20, 0.05


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 200-image twin: reference on half the center-1 images, the other half held out,
    centers 2 and 3 never trained on, and corrupted held-out images."""
    root = tmp_path_factory.mktemp("drift")
    twin = generate_twin(root / "twin", n_images=200, seed=11, defects=False, min_side=96, max_side=160)
    index, _ = btxrd.ingest_btxrd_dir(twin)
    checkpoint = make_checkpoint(root / "model.pt")
    classifier = Classifier.from_model(*load_checkpoint(checkpoint), checkpoint, "sha")
    center1 = index[index["center"] == "1"]["file"].tolist()
    train, held = center1[0::2], center1[1::2]
    other = index[index["center"] != "1"]["file"].tolist()
    s = {name: summarize(classifier, files, classifier.decode_file, 32)
         for name, files in {"train": train, "held": held, "other": other}.items()}
    rng = np.random.default_rng(0)
    broken = [corrupted(read_image(f), rng) for f in held]
    s["corrupted"] = summarize(classifier, broken, classifier.decode_bytes, 32)
    half = len(held) // 2   # validation (threshold) and test halves of the held-out images
    val = summarize(classifier, held[:half], classifier.decode_file, 32)
    ref = build_reference("sha", s["train"], np.arange(len(train)) % 3, val,
                          ReferenceParams(embedding_dims=16, sample_size=60), OodParams(), seed=0)
    return {"classifier": classifier, "ref": ref, "held_files": held, "root": root, **s}


def test_drift_false_alarms_and_detection_over_repeated_windows(world):
    rates = drift_error_rates(world["ref"], world["held"],
                              {"new_center": world["other"], "corrupted": world["corrupted"]},
                              WINDOW, WINDOWS, ALPHA, permutations=100, seed=1)
    assert rates["held_out"]["drift_rate"] <= ALPHA
    assert rates["shifted"]["new_center"]["drift_rate"] >= 0.9
    assert rates["shifted"]["corrupted"]["drift_rate"] >= 0.9


def test_psi_and_mmd_tell_same_from_shifted():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=2000)
    assert psi(ref, rng.normal(size=500)) < 0.1
    assert psi(ref, rng.normal(1.0, size=500)) > 0.25
    x = rng.normal(size=(100, 4))
    assert mmd_test(x, rng.normal(size=(100, 4)), 200, rng)[1] > 0.05
    assert mmd_test(x, rng.normal(0.7, size=(100, 4)), 200, rng)[1] < 0.01


def test_ood_sets_are_separated_and_radiographs_mostly_pass(world):
    c = world["classifier"]
    held = world["held_files"]
    radiographs = [read_image(f) for f in held[:10]]
    blobs = generate_sets(radiographs, 20, seed=5)
    sets = {name: summarize(c, items, c.decode_bytes, 32) for name, items in blobs.items()}
    test_half = summarize(c, held[len(held) // 2:], c.decode_file, 32)
    result = ood_evaluation(world["ref"].scorer, test_half, sets, {k: 20 for k in blobs})
    assert result["in_distribution"]["false_alarm_rate"] <= 0.2     # mostly in distribution
    for name in FAR_SETS:
        assert result["sets"][name]["combined"]["auroc"] >= 0.9, result["sets"][name]
    for r in result["sets"].values():
        assert {"auroc", "fpr_at_95_recall"} <= set(r["energy"]) and "max_softmax" in r


def test_generated_sets_are_deterministic():
    gray = np.tile(np.arange(64, dtype=np.uint8) * 3, (64, 1))
    assert generate_sets([gray], 2, seed=1) == generate_sets([gray], 2, seed=1)


def test_reference_round_trip_and_checkpoint_guard(world):
    path = world["root"] / "reference.npz"
    save_reference(path, world["ref"])
    loaded = load_reference(path, "sha")
    np.testing.assert_array_equal(loaded.train_stats, world["ref"].train_stats)
    assert loaded.scorer.threshold == world["ref"].scorer.threshold
    with pytest.raises(ReferenceError, match="another checkpoint"):
        load_reference(path, "other-sha")


def test_histogram_percentiles_equal_numpys():
    """The statistics' fast path must give np.percentile's numbers (linear interpolation)."""
    from assurexray.inference.features import PERCENTILES, uint8_percentiles
    rng = np.random.default_rng(3)
    for shape in ((1, 1), (7, 3), (256, 190)):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        counts = np.bincount(img.ravel(), minlength=256)
        np.testing.assert_allclose(uint8_percentiles(counts, PERCENTILES),
                                   np.percentile(img.astype(np.float64), PERCENTILES), rtol=0,
                                   atol=1e-9)


def test_mahalanobis_distance_equals_scipys():
    """The whitened distance (one matrix product) against scipy, class by class."""
    from scipy.spatial.distance import mahalanobis

    from assurexray.inference.ood import Mahalanobis
    rng = np.random.default_rng(4)
    train, groups = rng.normal(size=(300, 6)), rng.integers(0, 3, 300)
    model = Mahalanobis.fit(train, groups)
    x = rng.normal(size=(5, 6)) * 3
    expected = [min(mahalanobis(row, mean, model.precision) ** 2 for mean in model.means)
                for row in x]
    np.testing.assert_allclose(model.distance(x), expected, rtol=1e-10)


def test_image_stats_fast_paths_equal_numpys():
    """Mean, spread and edge strength from the histogram and OpenCV equal the plain float64
    computation."""
    from assurexray.inference.features import FEATURES, image_stats
    rng = np.random.default_rng(5)
    for shape in ((1, 1), (1, 9), (9, 1), (200, 150)):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        row = dict(zip(FEATURES, image_stats(img, (shape[1], shape[0]), {})))
        v = img.astype(np.float64)
        edge = (np.abs(np.diff(v, axis=0)).mean() if shape[0] > 1 else 0.0) + \
            (np.abs(np.diff(v, axis=1)).mean() if shape[1] > 1 else 0.0)
        np.testing.assert_allclose([row["mean"], row["contrast"], row["edge"]],
                                   [v.mean(), v.std(), edge], rtol=1e-12, atol=1e-12)
