"""Drift of a window of inputs against the training reference.

Per image statistic (against the training images): the population stability index (PSI, on
deciles of the reference; the usual reading is < 0.1 stable, 0.1-0.25 moderate, > 0.25 shifted)
and the two-sample Kolmogorov-Smirnov test. On the PCA-projected penultimate-layer embeddings
(against validation images: the network was fitted on the training ones, whose embeddings a
held-out image does not share): the maximum mean discrepancy (Gaussian kernel, median-distance
bandwidth) with a permutation p-value.

The window's verdict is one family of tests with a family-wise false-alarm rate of at most
alpha (weighted Bonferroni): the MMD test at alpha x ``DRIFT_EMBEDDING_SHARE``, the KS tests
sharing the rest equally. The embedding test gets half on its own because it alone sees what
the model sees; params.py refuses a number of permutations too small for its p-value to reach
that level. PSI is reported beside the tests, with its conventional band, but does not vote: on
a window of 100 its chance value alone reaches 0.1.
"""
from __future__ import annotations

import time

import numpy as np
from scipy.stats import ks_2samp

from assurexray import NOT_FOR_CLINICAL_USE
from assurexray.inference.features import FEATURES
from assurexray.inference.reference import Reference
from assurexray.param_checks import DRIFT_EMBEDDING_SHARE

PSI_BINS = 10
PSI_BANDS = ((0.1, "stable"), (0.25, "moderate"), (np.inf, "shifted"))
PSI_EPS = 1e-4


def psi(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of ``current`` against ``reference`` (reference quantile bins)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1)
    cur = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1)
    p = np.maximum(ref / ref.sum(), PSI_EPS)
    q = np.maximum(cur / cur.sum(), PSI_EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int,
             rng: np.random.Generator) -> tuple[float, float]:
    """(MMD^2 biased estimate, permutation p-value) between samples ``x`` and ``y``.

    MMD^2 = w' K w with w = 1/n on ``x``'s rows and -1/m on ``y``'s, so every permutation's
    statistic comes from one matrix product (1000 permutations of 400 points: ~0.1 s). The
    bandwidth is the median over all pairs, the same for every permutation: the test is exact.
    """
    z = np.concatenate([x, y]).astype(np.float64)
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    bandwidth = np.median(d2[np.triu_indices(len(z), 1)]) or 1.0
    k = np.exp(-d2 / bandwidth)
    weights = np.r_[np.full(len(x), 1 / len(x)), np.full(len(y), -1 / len(y))]
    shuffled = rng.permuted(np.repeat(weights[:, None], permutations, axis=1), axis=0)
    w = np.column_stack([weights, shuffled])
    stats = np.einsum("ij,ij->j", w, k @ w)
    observed, null = stats[0], stats[1:]
    return float(observed), float((1 + np.sum(null >= observed)) / (1 + permutations))


def drift_report(ref: Reference, stats: np.ndarray, embeddings: np.ndarray, alpha: float,
                 permutations: int, seed: int = 0) -> dict:
    """The JSON report of a window: ``stats`` (n, len(FEATURES)), raw ``embeddings`` (n, D)."""
    start = time.perf_counter()
    if len(stats) < 2:
        return {"n": int(len(stats)), "drift": None,
                "note": "need at least 2 inputs in the window to test drift"}
    levels = {"embedding": alpha * DRIFT_EMBEDDING_SHARE,
              "ks": alpha * (1 - DRIFT_EMBEDDING_SHARE) / len(FEATURES)}
    features = {}
    for j, name in enumerate(FEATURES):
        ks = ks_2samp(ref.train_stats[:, j], stats[:, j])
        value = psi(ref.train_stats[:, j], stats[:, j])
        features[name] = {
            "psi": value, "psi_band": next(band for bound, band in PSI_BANDS if value < bound),
            "ks": float(ks.statistic), "p_value": float(ks.pvalue),
            "drift": bool(ks.pvalue < levels["ks"]),
            "reference_median": float(np.median(ref.train_stats[:, j])),
            "window_median": float(np.median(stats[:, j]))}
    mmd, p_value = mmd_test(ref.emb_sample, ref.project(embeddings), permutations,
                            np.random.default_rng(seed))
    embedding = {"test": "MMD (Gaussian kernel, median bandwidth), permutation p-value",
                 "mmd2": mmd, "p_value": p_value, "permutations": permutations,
                 "reference_n": int(len(ref.emb_sample)), "drift": bool(p_value < levels["embedding"])}
    drifted = [name for name, f in features.items() if f["drift"]] + \
        (["embedding"] if embedding["drift"] else [])
    return {"n": int(len(stats)), "reference_n": int(len(ref.train_stats)), "alpha": alpha,
            "levels": levels, "tests": len(FEATURES) + 1, "drift": bool(drifted),
            "drifted": drifted, "features": features, "embedding": embedding,
            "seconds": round(time.perf_counter() - start, 4),
            "notice": NOT_FOR_CLINICAL_USE}
