"""Test-set intervals: grouped stratified percentile bootstrap, exact intervals for proportions.

AUCs and balanced accuracy (not proportions) get a grouped, class-stratified percentile
bootstrap. Views of one patient are not independent, so whole patient groups are resampled
(with replacement, within the stratum of the group's class) and every image carries its
group's multiplicity as a weight. All resamples are evaluated at once from a (1 + B, n_images)
weight matrix whose row 0 is the original sample (all ones): metrics are weighted sums, and
the AUC is a weighted Mann-Whitney statistic computed from one sort of the scores.

Accuracy, sensitivity and specificity are proportions: a percentile bootstrap collapses to
a zero-width interval at 0 or 1, so they get the grouped Clopper-Pearson interval of
``proportions`` instead, with their count and n.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from assurexray.evaluation import proportions
from assurexray.evaluation.metrics import macro_auc, ratio, weighted_auc
from assurexray.evaluation.predictions import read_predictions as read_prediction_table

BOOTSTRAP = "grouped stratified percentile bootstrap"
# The interval method of each key of analysis.json (recorded there).
METHODS = {**dict.fromkeys(("macro_auc", "auc", "balanced_accuracy"), BOOTSTRAP),
           **dict.fromkeys(("accuracy", "sensitivity", "specificity", "operating_points"),
                           proportions.METHOD)}
METHOD = f"{BOOTSTRAP} (AUCs, balanced accuracy); {proportions.METHOD} (proportions)"


@dataclass(frozen=True)
class Predictions:
    """One evaluated split: per image its id, true and predicted class index, class
    probabilities (n, K, model output order) and patient group."""
    image_ids: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)

    def subset(self, mask: np.ndarray) -> Predictions:
        return Predictions(self.image_ids[mask], self.y_true[mask], self.y_pred[mask],
                           self.probs[mask], self.groups[mask])


def read_groups(path: str | Path) -> pd.Series:
    """data/splits/groups.csv as a Series image_id -> group (both strings)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"image_id", "group"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: lacks columns {sorted(missing)}; rerun the split stage")
    _check_unique_ids(df, path)
    ungrouped = df["image_id"][df["group"] == ""]
    if len(ungrouped):
        raise ValueError(f"{path}: image {ungrouped.iloc[0]!r} has no group")
    return df.set_index("image_id")["group"]


def _check_unique_ids(df: pd.DataFrame, path) -> None:
    duplicated = df["image_id"].duplicated()
    if duplicated.any():
        raise ValueError(f"{path}: duplicated image_id {df['image_id'][duplicated].iloc[0]!r}")


def read_predictions(path: str | Path, classes: list[str], groups: pd.Series,
                     temperature: float = 1.0) -> Predictions:
    """Read a predictions CSV (the one reader in ``predictions``) and attach patient groups;
    probabilities are softmax(logits / temperature)."""
    table = read_prediction_table(path)
    if table.classes != list(classes):
        raise ValueError(f"{path}: classes {table.classes} differ from dataset.json {classes}")
    if not len(table.image_ids):
        raise ValueError(f"{path}: no predictions")
    return Predictions(table.image_ids, table.y_true, table.y_pred, table.probs(temperature),
                       groups_of(table.image_ids, groups, path))


def groups_of(image_ids: np.ndarray, groups: pd.Series, source) -> np.ndarray:
    """The patient group of each image (``groups``: ``read_groups``); an image without one
    is an error naming ``source``, the file the images came from."""
    unknown = ~pd.Series(image_ids).isin(groups.index)
    if unknown.any():
        raise ValueError(f"{source}: {unknown.sum()} image(s) have no patient group in groups.csv, "
                         f"e.g. {np.asarray(image_ids)[unknown.to_numpy()][0]!r}")
    return groups.loc[image_ids].to_numpy()


def group_strata(groups: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image -> group position, stratum per group). A group's stratum is its most frequent
    label (ties: the higher class index); surrogate groups hold one label anyway."""
    names, position = np.unique(groups, return_inverse=True)
    counts = np.zeros((len(names), y_true.max() + 1), int)
    np.add.at(counts, (position, y_true), 1)
    return position, counts.shape[1] - 1 - counts[:, ::-1].argmax(axis=1)


def resample_counts(strata: np.ndarray, n_iter: int, seed: int) -> np.ndarray:
    """(n_iter, n_groups) multiplicities: each stratum's groups drawn with replacement,
    keeping the stratum's number of groups."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_iter, len(strata)))
    rows = np.arange(n_iter)[:, None]
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        draws = members[rng.integers(0, len(members), size=(n_iter, len(members)))]
        np.add.at(counts, (rows, draws), 1)
    return counts


def bootstrap_weights(groups: np.ndarray, y_true: np.ndarray, n_iter: int, seed: int) -> np.ndarray:
    """(1 + n_iter, n_images) per-image weights; row 0 is the original sample."""
    position, strata = group_strata(groups, y_true)
    counts = resample_counts(strata, n_iter, seed)
    return np.vstack([np.ones(len(y_true)), counts[:, position]])


def weighted_metrics(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray,
                     weights: np.ndarray) -> dict[str, np.ndarray]:
    """The bootstrapped (non-proportion) metrics for every weight row: macro_auc and
    balanced_accuracy (B,), auc (B, K); NaN where undefined.

    Balanced accuracy averages the recall of the classes present in the row (as sklearn);
    macro AUC is ``metrics.macro_auc`` (undefined as soon as one class AUC is).
    """
    k = probs.shape[1]
    truth = np.eye(k, dtype=bool)[y_true]
    hit = np.eye(k, dtype=bool)[y_pred]
    sensitivity = ratio(weights @ (truth & hit), weights @ truth)
    auc = np.column_stack([weighted_auc(truth[:, c], probs[:, c], weights) for c in range(k)])
    present = np.isfinite(sensitivity)
    balanced = ratio(np.where(present, sensitivity, 0).sum(axis=1), present.sum(axis=1))
    return {"balanced_accuracy": balanced, "macro_auc": np.asarray(macro_auc(auc)), "auc": auc}


def summarize(values: np.ndarray, ci_level: float) -> dict:
    """{value, ci_low, ci_high, valid_resamples} from [original, resample 1..B]; percentile
    interval over the resamples where the metric is defined; None where undefined."""
    point, samples = values[0], values[1:]
    valid = samples[np.isfinite(samples)]
    if not np.isfinite(point) or not len(valid):
        return {"value": None if not np.isfinite(point) else float(point),
                "ci_low": None, "ci_high": None, "valid_resamples": int(len(valid))}
    alpha = 100 * (1 - ci_level) / 2
    low, high = np.percentile(valid, [alpha, 100 - alpha])
    return {"value": float(point), "ci_low": float(low), "ci_high": float(high),
            "valid_resamples": int(len(valid))}


def boundary_guarded(summary: dict, positive: np.ndarray, groups: np.ndarray,
                     ci_level: float) -> dict:
    """An AUC of exactly 0 or 1 makes every resample equal: the percentile interval has zero
    width however few patients stand behind it. There, the open end becomes the exact
    (Clopper-Pearson) bound of a perfect record on the effective number of patients in the
    smaller of the two classes, as if each of them had been ranked once."""
    value = summary["value"]
    if value not in (0.0, 1.0) or summary["ci_low"] != summary["ci_high"]:
        return summary
    positive = np.asarray(positive, bool)
    n_eff = min(proportions.effective_n(np.ones(int(side.sum()), bool), groups[side])
                for side in (positive, ~positive) if side.any())
    low, high = proportions.clopper_pearson(n_eff, n_eff, ci_level)
    bound = float(low) if value == 1.0 else 1 - float(low)
    return {**summary, "ci_low": min(bound, value), "ci_high": max(bound, value),
            "boundary": f"exact bound on {n_eff:.2f} effective patients (percentile interval "
                        "had zero width)"}


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted mean of ``values`` for every weight row; NaN where a row weighs nothing."""
    return ratio(weights @ np.asarray(values, float), weights.sum(axis=1))


@dataclass(frozen=True)
class GroupedResampling:
    """A grouped stratified bootstrap over a set of images, for statistics other than the
    main metrics (localization scores, ECE, ROAD): each image's patient group and stratum
    (e.g. its true class index), with the iterations, interval level and seed."""
    groups: np.ndarray
    strata: np.ndarray
    iterations: int
    ci_level: float
    seed: int

    def subset(self, keep: np.ndarray) -> GroupedResampling:
        return replace(self, groups=self.groups[keep], strata=self.strata[keep])

    def interval(self, statistic: Callable[[np.ndarray], np.ndarray]) -> dict:
        """``summarize`` of ``statistic`` (weight rows (1 + B, n) -> values (1 + B,)) with n
        and n_groups; no interval from fewer than two groups, whose resamples can only
        repeat the sample (a zero-width interval claiming certainty)."""
        n_groups = len(np.unique(self.groups))
        if not n_groups:
            return {"value": None, "ci_low": None, "ci_high": None, "valid_resamples": 0,
                    "n": 0, "n_groups": 0}
        weights = bootstrap_weights(self.groups, np.asarray(self.strata, int), self.iterations,
                                    self.seed)
        out = summarize(statistic(weights), self.ci_level)
        if n_groups < 2:
            out.update(ci_low=None, ci_high=None)
        return {**out, "n": len(self.groups), "n_groups": n_groups}

    def mean_interval(self, values: np.ndarray) -> dict:
        """Interval of values.mean() (values aligned with the groups)."""
        return self.interval(lambda weights: weighted_mean(values, weights))


def bootstrap_metrics(preds: Predictions, classes: list[str], n_iter: int, ci_level: float,
                      seed: int) -> dict:
    """Point estimates and intervals of the main metrics (the method of each: ``METHODS``).

    Keys: macro_auc, balanced_accuracy (bootstrap intervals), accuracy (proportion interval)
    and auc (bootstrap), sensitivity, specificity (proportion) as {class: interval}.
    """
    weights = bootstrap_weights(preds.groups, preds.y_true, n_iter, seed)
    values = weighted_metrics(preds.y_true, preds.y_pred, preds.probs, weights)
    out = {name: summarize(values[name], ci_level) for name in ("macro_auc", "balanced_accuracy")}
    out["accuracy"] = proportions.proportion_interval(preds.y_true == preds.y_pred, preds.groups,
                                                      ci_level)
    out["auc"] = {c: boundary_guarded(summarize(values["auc"][:, i], ci_level),
                                      preds.y_true == i, preds.groups, ci_level)
                  for i, c in enumerate(classes)}
    smallest = np.argmin(np.bincount(preds.y_true, minlength=len(classes)))
    out["macro_auc"] = boundary_guarded(out["macro_auc"], preds.y_true == smallest, preds.groups,
                                        ci_level)
    out["sensitivity"], out["specificity"] = {}, {}
    for i, c in enumerate(classes):
        actual, called = preds.y_true == i, preds.y_pred == i
        out["sensitivity"][c] = proportions.proportion_interval(
            called[actual], preds.groups[actual], ci_level)
        out["specificity"][c] = proportions.proportion_interval(
            ~called[~actual], preds.groups[~actual], ci_level)
    return out
