"""Classification metrics for a K-class classifier, vectorized for bootstrap use.

The helpers work along the last axis, so a bootstrap can pass (B, N) resampled arrays and get
B values in one call. Undefined values (a class absent from y_true, no predicted positives)
are NaN, never a silent 0; ``jsonio.json_safe`` turns them into JSON null.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def ovr_auc(y_true_bin: np.ndarray, scores: np.ndarray) -> np.ndarray | float:
    """ROC AUC of ``scores`` for the positives in ``y_true_bin`` along the last axis.

    Mann-Whitney U from average ranks (ties count one half), so it equals
    sklearn.metrics.roc_auc_score. NaN where one of the two classes is absent.
    """
    y = np.asarray(y_true_bin, dtype=bool)
    ranks = rankdata(np.asarray(scores, dtype=float), axis=-1)
    n_pos = y.sum(axis=-1)
    n_neg = y.shape[-1] - n_pos
    rank_sum = np.where(y, ranks, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    auc = np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)
    return auc[()]


def binary_counts(y_true_bin: np.ndarray, y_pred_bin: np.ndarray) -> dict[str, np.ndarray]:
    """tp, fp, fn, tn along the last axis."""
    y = np.asarray(y_true_bin, dtype=bool)
    p = np.asarray(y_pred_bin, dtype=bool)
    return {
        "tp": (y & p).sum(axis=-1), "fp": (~y & p).sum(axis=-1),
        "fn": (y & ~p).sum(axis=-1), "tn": (~y & ~p).sum(axis=-1),
    }


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 (a rate without a denominator is undefined)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)[()]


def weighted_auc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted ROC AUC for each row of ``weights`` ((B, n) or (n,)); ties count one half.

    Equals sklearn's roc_auc_score(positive, scores, sample_weight=row); NaN where a row has
    no positive or no negative weight.
    """
    weights = np.atleast_2d(weights).astype(float)
    positive = np.asarray(positive, bool)
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_pos, w = scores[order], positive[order], weights[:, order]
    # Negative weight at or below each position, with a leading zero column.
    neg_cum = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w * ~sorted_pos, axis=1)], axis=1)
    _, start, size = np.unique(sorted_scores, return_index=True, return_counts=True)
    first = np.repeat(start, size)[sorted_pos]          # first index of each positive's tie block
    last = first + np.repeat(size, size)[sorted_pos]    # one past its last index
    below = neg_cum[:, first]
    tied = neg_cum[:, last] - below
    pos_w = w[:, sorted_pos]
    return ratio((pos_w * (below + 0.5 * tied)).sum(axis=1), pos_w.sum(axis=1) * neg_cum[:, -1])


def binary_rates(y_true_bin: np.ndarray, y_pred_bin: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV and F1 along the last axis (NaN when undefined).

    The one implementation of these rates (per-class metrics and operating points use it)."""
    c = binary_counts(y_true_bin, y_pred_bin)
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


def macro_auc(class_auc: np.ndarray) -> np.ndarray | float:
    """Macro one-vs-rest AUC: the mean of the class AUCs along the last axis, NaN as soon as
    one class AUC is undefined (a class absent, or no negative for it).

    The one definition used by training, evaluation, the bootstrap and robustness: a mean over
    the classes that happen to be present would be another metric, silently compared with the
    full one (a subgroup or partition without Malignant would look better, not undefined).
    """
    return np.asarray(class_auc, dtype=float).mean(axis=-1)[()]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) counts, rows = actual class, columns = predicted class."""
    flat = np.asarray(y_true) * n_classes + np.asarray(y_pred)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest AUC, sensitivity, specificity, PPV, NPV, F1 and support for each class.

    Arrays have shape (K,) for (N,) labels, or (B, K) for (B, N) labels and (B, N, K) probs.
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=float)
    k = probs.shape[-1]
    onehot = y_true[..., None] == np.arange(k)                      # (..., N, K)
    predicted = probs.argmax(axis=-1)[..., None] == np.arange(k)
    onehot, predicted = np.moveaxis(onehot, -1, -2), np.moveaxis(predicted, -1, -2)
    out = binary_rates(onehot, predicted)                           # (..., K)
    out["auc"] = np.asarray(ovr_auc(onehot, np.moveaxis(probs, -1, -2)))  # (..., K): never a scalar
    out["support"] = onehot.sum(axis=-1)
    return out


def classification_metrics(y_true, probs, classes) -> dict:
    """Accuracy, balanced accuracy, macro AUC/F1, weighted F1, per-class rates, confusion matrix.

    Macro F1 and balanced accuracy average the classes where the value is defined (as sklearn);
    macro AUC follows ``macro_auc`` (undefined when a class is absent). A class absent from
    ``y_true`` has AUC NaN (JSON null) and a note saying so.
    """
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    classes = list(classes)
    if probs.ndim != 2 or probs.shape != (len(y_true), len(classes)):
        raise ValueError(f"probs shape {probs.shape} does not match {len(y_true)} labels "
                         f"x {len(classes)} classes")
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= len(classes)):
        raise ValueError(f"labels must lie in 0..{len(classes) - 1}, got {sorted(set(y_true))}")
    y_pred = probs.argmax(axis=1)
    pc = per_class_metrics(y_true, probs)
    support = pc["support"]
    notes = [f"class {c!r} is absent from the labels: its AUC and sensitivity, and the macro "
             "AUC, are undefined" for c, s in zip(classes, support) if s == 0]
    rates = ("auc", "sensitivity", "specificity", "ppv", "npv", "f1")
    per_class = {c: {"support": int(support[i]), **{m: float(pc[m][i]) for m in rates}}
                 for i, c in enumerate(classes)}
    cm = confusion_matrix(y_true, y_pred, len(classes))
    return {
        "n": int(len(y_true)),
        "accuracy": float(np.mean(y_pred == y_true)) if len(y_true) else math.nan,
        "balanced_accuracy": _nanmean(pc["sensitivity"]),
        "macro_auc": float(macro_auc(pc["auc"])),
        "macro_f1": _nanmean(pc["f1"]),
        "weighted_f1": float(ratio(np.nansum(pc["f1"] * support), support.sum())),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "notes": notes,
    }


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
