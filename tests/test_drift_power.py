"""The drift test at the shipped settings (params.yaml: window, alpha, permutations, PCA
dimensions, reference sample): its false alarms on held-out in-distribution windows, its
detection of new-center and corrupted windows, and an embedding-only shift that the image
statistics' KS tests cannot see."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from assurexray.data import btxrd
from assurexray.data.imageio import read_image
from assurexray.data.ood_sets import corrupted
from assurexray.data.synthetic.writer import generate_twin
from assurexray.inference.classifier import Classifier
from assurexray.inference.drift import drift_report
from assurexray.inference.monitoring import build_reference, drift_error_rates, summarize
from assurexray.params import load_params
from test_predict import make_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHIPPED = load_params(REPO / "params.yaml")
WINDOWS = 20
# Embedding-only shift: every embedding moved by this many standard deviations of the
# reference along its first principal direction (0.25 is caught about half the time).
SHIFT_SD = 0.5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 600-image twin: center-1 images in thirds (training statistics and PCA, validation
    reference sample, held out), centers 2 and 3 never trained on, corrupted held-out images."""
    root = tmp_path_factory.mktemp("drift_power")
    twin = generate_twin(root / "twin", n_images=600, seed=11, defects=False, min_side=96,
                         max_side=160)
    index, _ = btxrd.ingest_btxrd_dir(twin)
    classifier = Classifier.from_files(make_checkpoint(root / "model.pt"))
    center1 = index[index["center"] == "1"]["file"].tolist()
    parts = {"train": center1[0::3], "val": center1[1::3], "held": center1[2::3],
             "new_center": index[index["center"] != "1"]["file"].tolist()}
    s = {name: summarize(classifier, files, classifier.decode_file, 64)
         for name, files in parts.items()}
    rng = np.random.default_rng(0)
    s["corrupted"] = summarize(classifier, [corrupted(read_image(f), rng) for f in parts["held"]],
                               classifier.decode_bytes, 64)
    ref = build_reference("sha", s["train"], np.arange(len(parts["train"])) % 3, s["val"],
                          SHIPPED.reference, SHIPPED.ood, SHIPPED.seed)
    return {"ref": ref, **s}


def rates(world, shifted: dict) -> dict:
    serve = SHIPPED.serve
    return drift_error_rates(world["ref"], world["held"], shifted, serve.drift_window, WINDOWS,
                             serve.drift_alpha, serve.drift_permutations, seed=1)


def test_shipped_drift_test_holds_false_alarms_and_catches_shifts(world):
    result = rates(world, {"new_center": world["new_center"], "corrupted": world["corrupted"]})
    assert result["held_out"]["window"] == SHIPPED.serve.drift_window
    assert result["held_out"]["drift_rate"] <= 0.05
    assert result["shifted"]["new_center"]["drift_rate"] >= 0.9
    assert result["shifted"]["corrupted"]["drift_rate"] >= 0.9


def test_embedding_test_alone_catches_an_embedding_only_shift(world):
    """Held-out windows keep their image statistics (so every KS test sees in-distribution
    data) while their embeddings move: only the MMD test can fire, and it must."""
    held, ref = world["held"], world["ref"]
    step = SHIFT_SD * ref.emb_sample[:, 0].std() * ref.pca_components[0]
    rng = np.random.default_rng(2)
    serve = SHIPPED.serve
    ks_fired = embedding_fired = 0
    for k in range(WINDOWS):
        pick = rng.choice(len(held.stats), size=serve.drift_window, replace=False)
        report = drift_report(ref, held.stats[pick], held.embeddings[pick] + step,
                              serve.drift_alpha, serve.drift_permutations, seed=k)
        ks_fired += any(f["drift"] for f in report["features"].values())
        embedding_fired += report["embedding"]["drift"]
    assert ks_fired <= 0.05 * WINDOWS
    assert embedding_fired >= 0.9 * WINDOWS


def nearest(rows: np.ndarray, pool: np.ndarray) -> np.ndarray:
    return np.sqrt(((rows[:, None, :] - pool[None, :, :]) ** 2).sum(-1)).min(axis=1)


def test_reference_sample_is_validation_not_training(world):
    """The network was fitted on the training images: the embedding reference is drawn from
    validation ones, which a held-out image resembles."""
    ref = world["ref"]
    scale = np.abs(ref.emb_sample).max()
    assert nearest(ref.emb_sample, ref.project(world["val"].embeddings)).max() < 1e-6 * scale
    # (the twin repeats a few images across splits, as the real set does: the median, not all)
    assert np.median(nearest(ref.emb_sample, ref.project(world["train"].embeddings))) > 1e-2 * scale
    assert len(ref.emb_sample) == min(SHIPPED.reference.sample_size, len(world["val"].stats))
