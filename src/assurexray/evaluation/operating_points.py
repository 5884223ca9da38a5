"""Binary operating points: thresholds chosen on validation, judged on test.

Two questions a reader asks of a tumour classifier: "is it malignant?" (score P(Malignant))
and "is there a tumour at all?" (score 1 - P(Normal)). For each, thresholds are picked on the
validation split (Youden's J, a sensitivity target, a specificity target) and only applied to
test, where sensitivity, specificity, PPV and NPV get grouped bootstrap intervals.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_curve

from assurexray.evaluation.bootstrap import Predictions, bootstrap_weights, summarize
from assurexray.evaluation.metrics import ratio

log = logging.getLogger(__name__)

RATES = ("sensitivity", "specificity", "ppv", "npv")
# Float slack when comparing a rate with its target (0.9 may be stored as 0.8999...).
TOLERANCE = 1e-9


@dataclass(frozen=True)
class BinaryTask:
    """Positive classes and the score: P(score_class), or 1 - P(score_class) if complement."""
    positive: tuple[int, ...]
    score_class: int
    complement: bool
    description: str

    def labels(self, y_true: np.ndarray) -> np.ndarray:
        return np.isin(y_true, self.positive)

    def scores(self, probs: np.ndarray) -> np.ndarray:
        p = probs[:, self.score_class]
        return 1 - p if self.complement else p


def _find(classes: list[str], name: str) -> int | None:
    matches = [i for i, c in enumerate(classes) if c.lower() == name.lower()]
    return matches[0] if matches else None


def malignant_index(classes: list[str]) -> int:
    """The class named 'Malignant' (any case), else the last class (most severe by convention)."""
    if len(classes) < 2:
        raise ValueError(f"binary operating points need at least 2 classes, got {classes}")
    found = _find(classes, "Malignant")
    return len(classes) - 1 if found is None else found


def binary_tasks(classes: list[str]) -> dict[str, BinaryTask | str]:
    """The binary tasks of a class list; a task that does not apply maps to the reason."""
    malignant = malignant_index(classes)
    tasks: dict[str, BinaryTask | str] = {
        "malignant_vs_rest": BinaryTask((malignant,), malignant, False, f"P({classes[malignant]})")}
    normal = _find(classes, "Normal")
    if normal is None:
        tasks["tumour_vs_normal"] = (
            f"tumour vs normal needs a 'Normal' class; classes are {classes}")
    else:
        others = tuple(i for i in range(len(classes)) if i != normal)
        tasks["tumour_vs_normal"] = BinaryTask(others, normal, True, f"1 - P({classes[normal]})")
    return tasks


def choose_thresholds(positive: np.ndarray, scores: np.ndarray, sensitivity_target: float,
                      specificity_target: float) -> dict[str, dict]:
    """{youden, sensitivity_target, specificity_target: {threshold, note[, target]}}; predict
    positive when score >= threshold. Keys stay the same whatever the targets (DVC columns).

    Youden: max sensitivity + specificity - 1. Sensitivity target: the highest threshold that
    reaches it (best specificity). Specificity target: the lowest threshold that keeps it
    (best sensitivity); if even the highest score misses it, that threshold and a note.
    """
    targets = {"youden": {}, "sensitivity_target": {"target": sensitivity_target},
               "specificity_target": {"target": specificity_target}}
    if positive.all() or not positive.any():
        note = "validation has no " + ("negative" if positive.all() else "positive") + " images"
        return {k: {**t, "threshold": None, "note": note} for k, t in targets.items()}
    fpr, tpr, thresholds = roc_curve(positive, scores, drop_intermediate=False)
    # Row 0 is sklearn's artificial +inf threshold (nobody positive): not a usable threshold.
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    youden = np.argmax(tpr - fpr)
    # tpr reaches 1 at the lowest threshold, so the sensitivity target is always reachable.
    reach_sens = np.flatnonzero(tpr >= sensitivity_target - TOLERANCE)[0]
    keep_spec = np.flatnonzero(1 - fpr >= specificity_target - TOLERANCE)
    spec_note = None if keep_spec.size else (
        f"specificity >= {specificity_target:.2f} not reachable on validation; "
        f"best is {1 - fpr[0]:.3f} at the highest score")
    chosen = {"youden": (youden, None), "sensitivity_target": (reach_sens, None),
              "specificity_target": (keep_spec[-1] if keep_spec.size else 0, spec_note)}
    return {k: {**targets[k], "threshold": float(thresholds[i]), "note": note}
            for k, (i, note) in chosen.items()}


def binary_rates(positive: np.ndarray, predicted: np.ndarray, weights: np.ndarray) -> dict:
    """Sensitivity, specificity, PPV, NPV for each weight row (NaN where undefined)."""
    tp, fn = weights @ (positive & predicted), weights @ (positive & ~predicted)
    fp, tn = weights @ (~positive & predicted), weights @ (~positive & ~predicted)
    return {"sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
            "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn)}


def _point(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def evaluate_task(task: BinaryTask, val: Predictions, test: Predictions, test_weights: np.ndarray,
                  sensitivity_target: float, specificity_target: float, ci_level: float) -> dict:
    """Thresholds from validation, with validation rates and test intervals for each."""
    val_pos, val_scores = task.labels(val.y_true), task.scores(val.probs)
    test_pos, test_scores = task.labels(test.y_true), task.scores(test.probs)
    chosen = choose_thresholds(val_pos, val_scores, sensitivity_target, specificity_target)
    out = {"score": task.description}
    for key, choice in chosen.items():
        if choice["note"]:
            log.warning("operating point %s (%s): %s", key, task.description, choice["note"])
        threshold = choice["threshold"]
        if threshold is None:
            val_rates = {r: None for r in RATES}
            test_rates = {r: summarize(np.full(len(test_weights), np.nan), ci_level) for r in RATES}
        else:
            val_rates = {r: _point(v[0]) for r, v in binary_rates(
                val_pos, val_scores >= threshold, np.ones((1, len(val)))).items()}
            test_rates = {r: summarize(v, ci_level) for r, v in binary_rates(
                test_pos, test_scores >= threshold, test_weights).items()}
        out[key] = {**choice, "val": val_rates, "test": test_rates}
    return out


def operating_points(val: Predictions, test: Predictions, classes: list[str],
                     sensitivity_target: float, specificity_target: float, n_iter: int,
                     ci_level: float, seed: int) -> dict:
    """Every binary task of ``classes``: evaluated, or {"skipped": reason}."""
    test_weights = bootstrap_weights(test.groups, test.y_true, n_iter, seed)
    out = {}
    for name, task in binary_tasks(classes).items():
        if isinstance(task, str):
            log.warning("operating points %s skipped: %s", name, task)
            out[name] = {"skipped": task}
        else:
            out[name] = evaluate_task(task, val, test, test_weights, sensitivity_target,
                                      specificity_target, ci_level)
    return out
