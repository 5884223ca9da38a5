"""Calibration metrics (top-label ECE/MCE, Brier, NLL), reliability bins, temperature scaling.

Binning follows torchmetrics' MulticlassCalibrationError: ``n_bins`` equal-width bins on the
top-label confidence, right-open ([lo, hi)), so the tests can compare against it directly;
the one difference: a confidence of exactly 1.0 falls in the last bin (torchmetrics gives it
a bin of its own).
The temperature is fitted on validation logits only; test logits are only ever transformed.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from assurexray.evaluation.bootstrap import BOOTSTRAP, GroupedResampling
from assurexray.evaluation.metrics import ratio

log = logging.getLogger(__name__)

# Search range for log T: T in [0.05, 20] covers any plausible over/under-confidence.
LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """The bin of each confidence: ``n_bins`` equal-width, right-open bins, 1.0 in the last."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)


def reliability_bins(probs: np.ndarray, y_true: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """Per bin: mean top-label confidence, accuracy and count (empty bins: count 0, NaN means)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = bin_index(confidence, n_bins)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, confidence, n_bins) / count
        accuracy = np.bincount(index, correct.astype(float), n_bins) / count
    return {"lower": edges[:-1], "upper": edges[1:], "confidence": mean_conf,
            "accuracy": accuracy, "count": count}


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int) -> float:
    """Top-label ECE: count-weighted mean |accuracy - confidence| over the bins."""
    bins = reliability_bins(probs, y_true, n_bins)
    gap = np.abs(bins["accuracy"] - bins["confidence"])
    return float(np.nansum(gap * bins["count"]) / len(y_true))


def weighted_ece(probs: np.ndarray, y_true: np.ndarray, n_bins: int,
                 weights: np.ndarray) -> np.ndarray:
    """Top-label ECE for every row of ``weights`` ((B, n)), images counted by their weight:
    sum over bins of |weighted sum of (correct - confidence)| over the total weight, which is
    ``expected_calibration_error`` for a row of ones."""
    confidence = probs.max(axis=1)
    gap = (probs.argmax(axis=1) == y_true) - confidence
    in_bin = np.eye(n_bins)[bin_index(confidence, n_bins)]
    return ratio(np.abs(weights @ (in_bin * gap[:, None])).sum(axis=1), weights.sum(axis=1))


def ece_interval(probs: np.ndarray, y_true: np.ndarray, n_bins: int,
                 resampling: GroupedResampling) -> dict:
    """ECE with its grouped bootstrap interval (``resampling`` aligned with the images)."""
    return resampling.interval(lambda weights: weighted_ece(probs, y_true, n_bins, weights))


def ece_before_after(probs_before: np.ndarray, probs_after: np.ndarray, y_true: np.ndarray,
                     n_bins: int, temperature: float, resampling: GroupedResampling) -> dict:
    """The ECE before and after temperature scaling, each with its grouped interval over the
    same resamples."""
    return {"temperature": temperature, "n_bins": n_bins, "method": BOOTSTRAP,
            "ece": {name: ece_interval(probs, y_true, n_bins, resampling)
                    for name, probs in (("before", probs_before), ("after", probs_after))}}


def maximum_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int) -> float:
    """Top-label MCE: the largest |accuracy - confidence| over non-empty bins."""
    bins = reliability_bins(probs, y_true, n_bins)
    return float(np.nanmax(np.abs(bins["accuracy"] - bins["confidence"])))


def brier_score(probs: np.ndarray, y_true: np.ndarray) -> float:
    """Multiclass Brier score: mean over samples of the summed squared error to the one-hot."""
    onehot = np.eye(probs.shape[1])[y_true]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def nll(logits: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true class under softmax(logits / T)."""
    log_probs = log_softmax(np.asarray(logits, dtype=float) / temperature, axis=1)
    return float(-np.mean(log_probs[np.arange(len(y_true)), y_true]))


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature T > 0 minimizing the NLL of softmax(logits / T).

    The NLL is convex in 1/T, hence unimodal in log T, so a bounded scalar search finds the
    optimum deterministically. Dividing by T > 0 never changes the argmax.
    """
    if len(y_true) == 0:
        raise ValueError("fit_temperature: no validation samples")
    result = minimize_scalar(lambda log_t: nll(logits, y_true, math.exp(log_t)),
                             bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    temperature = float(math.exp(result.x))
    if min(abs(result.x - b) for b in LOG_T_BOUNDS) < 1e-3:
        log.warning("temperature %.3g is at the edge of its search range %s: the logits carry "
                    "almost no information (an untrained or collapsed model?)", temperature,
                    tuple(round(math.exp(b), 3) for b in LOG_T_BOUNDS))
    return temperature


def calibration_summary(logits: np.ndarray, y_true: np.ndarray, n_bins: int,
                        temperature: float = 1.0) -> dict[str, float]:
    """ECE, MCE, Brier, NLL and accuracy of softmax(logits / T)."""
    probs = softmax(np.asarray(logits, dtype=float) / temperature, axis=1)
    return {
        "ece": expected_calibration_error(probs, y_true, n_bins),
        "mce": maximum_calibration_error(probs, y_true, n_bins),
        "brier": brier_score(probs, y_true),
        "nll": nll(logits, y_true, temperature),
        "accuracy": float(np.mean(probs.argmax(axis=1) == y_true)),
    }


def temperature_scaling_report(val_logits: np.ndarray, val_y: np.ndarray, test_logits: np.ndarray,
                               test_y: np.ndarray, n_bins: int) -> dict:
    """Fit T on validation, then {temperature, n_bins, val|test: {before, after: summary}}."""
    temperature = fit_temperature(val_logits, val_y)
    report: dict[str, Any] = {"temperature": temperature, "n_bins": n_bins}
    for name, logits, y in (("val", val_logits, val_y), ("test", test_logits, test_y)):
        report[name] = {"before": calibration_summary(logits, y, n_bins),
                        "after": calibration_summary(logits, y, n_bins, temperature)}
    return report


def reliability_rows(logits: np.ndarray, y_true: np.ndarray, n_bins: int,
                     temperature: float) -> list[dict]:
    """Rows {calibration: before|after, bin, lower, upper, confidence, accuracy, count} of the
    non-empty bins (an empty bin has no confidence or accuracy to plot)."""
    rows = []
    for name, t in (("before", 1.0), ("after", temperature)):
        bins = reliability_bins(softmax(logits / t, axis=1), y_true, n_bins)
        for b in np.flatnonzero(bins["count"]):
            rows.append({"calibration": name, "bin": int(b),
                         **{k: bins[k][b].item() for k in ("lower", "upper", "confidence",
                                                           "accuracy", "count")}})
    return rows


def plot_reliability(rows: list[dict], title: str, path) -> None:
    """Reliability diagram (accuracy vs mean confidence per bin), before and after scaling."""
    fig = Figure(figsize=(5, 5), dpi=120)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfect calibration")
    for name, marker in (("before", "o"), ("after", "s")):
        pts = [(r["confidence"], r["accuracy"]) for r in rows if r["calibration"] == name]
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=f"{name} temperature scaling")
    ax.set(xlabel="Mean confidence (top label)", ylabel="Accuracy", xlim=(0, 1), ylim=(0, 1),
           title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
