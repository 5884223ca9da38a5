"""Confidence intervals for proportions (accuracy, sensitivity, specificity, PPV, NPV).

A percentile bootstrap of a proportion collapses to a zero-width interval when every image
agrees (a sensitivity of 15/15 gets "1.0 (1.0-1.0)"), which claims certainty that 15 images
cannot give. A proportion gets instead the Clopper-Pearson (exact binomial) interval, made
to respect the patient groups the way Korn and Graubard (1998) do for clustered surveys: the
sample size is replaced by an effective n = n / design effect.

- The design effect is the cluster-robust (ratio-estimator) variance of the proportion over
  its binomial variance, both with their small-sample factors (G/(G-1) and n/(n-1)), so one
  image per group gives exactly 1, i.e. the plain Clopper-Pearson interval. It is never
  taken below 1: clustering cannot make an estimate more precise than independent images.
- At 0 or 1 (or with a single group) the variance ratio is 0/0; the effective n is then the
  worst case, views of one patient being perfectly correlated: n^2 / sum(n_g^2), the number of
  groups when they have equal sizes.
- Clopper-Pearson with a non-integer count is the beta-quantile formula, as Korn and Graubard
  use it; with integer counts it equals scipy.stats.binomtest(...).proportion_ci("exact").
"""
from __future__ import annotations

import numpy as np
from scipy.stats import beta

METHOD = "Clopper-Pearson with a design-effect effective n over patient groups (Korn-Graubard)"


def clopper_pearson(count, n, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) exact binomial interval of count/n; counts may be fractional (effective n)."""
    count, n = np.asarray(count, float), np.asarray(n, float)
    alpha = 1 - level
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(count > 0, beta.ppf(alpha / 2, count, n - count + 1), 0.0)
        high = np.where(count < n, beta.ppf(1 - alpha / 2, count + 1, n - count), 1.0)
    return low[()], high[()]


def effective_n(hits: np.ndarray, groups: np.ndarray) -> float:
    """n / design effect of the proportion hits.mean() when images cluster in ``groups``."""
    hits = np.asarray(hits, bool)
    n = len(hits)
    _, position = np.unique(groups, return_inverse=True)
    n_g = np.bincount(position).astype(float)
    x_g = np.bincount(position, weights=hits.astype(float))
    p = hits.mean()
    if len(n_g) < 2 or p in (0.0, 1.0):
        return float(n ** 2 / np.sum(n_g ** 2))
    var_binomial = p * (1 - p) / (n - 1)
    g = len(n_g)
    var_cluster = g / (g - 1) * np.sum((x_g - p * n_g) ** 2) / n ** 2
    return float(n / max(1.0, var_cluster / var_binomial))


def proportion_interval(hits: np.ndarray, groups: np.ndarray, level: float) -> dict:
    """{value, ci_low, ci_high, count, n, n_groups, n_effective} of hits.mean(); None-valued
    (count and n 0) when there is no image to count."""
    hits = np.asarray(hits, bool)
    n = len(hits)
    if n == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "count": 0, "n": 0,
                "n_groups": 0, "n_effective": None}
    n_eff = effective_n(hits, groups)
    p = hits.mean()
    low, high = clopper_pearson(p * n_eff, n_eff, level)
    return {"value": float(p), "ci_low": float(low), "ci_high": float(high),
            "count": int(hits.sum()), "n": n, "n_groups": int(len(np.unique(groups))),
            "n_effective": round(n_eff, 2)}
