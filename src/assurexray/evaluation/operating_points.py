"""Binary operating points: thresholds chosen on validation, shipped with the model, judged on test.

Two questions a reader asks of a tumour classifier: "is it malignant?" (score P(Malignant))
and "is there a tumour at all?" (score 1 - P(Normal)). For each, thresholds are picked on the
validation split (Youden's J, a sensitivity target, a specificity target) on the probability
scale the model ships with (the calibrate stage passes temperature-scaled probabilities), and
stored as plain data in the calibrated checkpoint, one of them marked as the decision
``predict`` makes. On test, sensitivity, specificity, PPV and NPV get grouped Clopper-Pearson
intervals (``proportions``) with their counts.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from assurexray.errors import AssureXRayError
from assurexray.evaluation.bootstrap import Predictions
from assurexray.evaluation.metrics import binary_rates
from assurexray.evaluation.proportions import proportion_interval

log = logging.getLogger(__name__)

RATES = ("sensitivity", "specificity", "ppv", "npv")
POINTS = ("youden", "sensitivity_target", "specificity_target")
# Float slack when comparing a rate with its target (0.9 may be stored as 0.8999...).
TOLERANCE = 1e-9


class OperatingPointsError(AssureXRayError, ValueError):
    """The fitted operating points are missing or do not fit the classes."""


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
        p = probs[..., self.score_class]
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


def _point(value) -> float | None:
    return float(value) if np.isfinite(value) else None


def _val_rates(positive: np.ndarray, scores: np.ndarray, threshold: float | None) -> dict:
    """Validation rates at ``threshold`` (None where undefined) and the class counts."""
    counts = {"n_positive": int(positive.sum()), "n_negative": int((~positive).sum())}
    if threshold is None:
        return {**dict.fromkeys(RATES), **counts}
    rates = binary_rates(positive, scores >= threshold)
    return {**{r: _point(rates[r]) for r in RATES}, **counts}


def _task_record(task: BinaryTask, classes: list[str]) -> dict:
    """The task as plain data: enough for ``task_from_record`` to rebuild it."""
    return {"score": task.description, "positive": [classes[i] for i in task.positive],
            "score_class": classes[task.score_class], "complement": task.complement}


def task_from_record(record: dict, classes: list[str]) -> BinaryTask:
    return BinaryTask(tuple(classes.index(c) for c in record["positive"]),
                      classes.index(record["score_class"]), bool(record["complement"]),
                      record["score"])


def fit_operating_points(y_true: np.ndarray, probs: np.ndarray, classes: list[str],
                         sensitivity_target: float, specificity_target: float, decision: str,
                         scale: str) -> dict:
    """Thresholds of every binary task of ``classes``, chosen on validation labels and probs.

    Plain data (for checkpoint meta and JSON): {task: {score, positive, score_class,
    complement, scale, decision, youden|sensitivity_target|specificity_target: {threshold,
    note[, target], val: {sensitivity, specificity, ppv, npv, n_positive, n_negative}}}},
    or {task: {"skipped": reason}}. ``scale`` names the probabilities passed (the one
    ``predict`` must apply the thresholds to); ``decision`` is the point ``predict`` uses.
    """
    if decision not in POINTS:
        raise ValueError(f"decision must be one of {POINTS}, got {decision!r}")
    out: dict[str, dict[str, Any]] = {}
    for name, task in binary_tasks(classes).items():
        if isinstance(task, str):
            log.warning("operating points %s skipped: %s", name, task)
            out[name] = {"skipped": task}
            continue
        positive, scores = task.labels(y_true), task.scores(probs)
        chosen = choose_thresholds(positive, scores, sensitivity_target, specificity_target)
        out[name] = {**_task_record(task, classes), "scale": scale, "decision": decision}
        for key, choice in chosen.items():
            if choice["note"]:
                log.warning("operating point %s (%s): %s", key, task.description, choice["note"])
            out[name][key] = {**choice, "val": _val_rates(positive, scores, choice["threshold"])}
    return out


def read_fitted(path: str | Path, classes: list[str]) -> tuple[float, dict]:
    """(temperature, operating points) as the calibrate stage wrote them to its metrics file."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise OperatingPointsError(f"{path}: not JSON ({exc}); rerun the calibrate stage") from exc
    missing = [k for k in ("temperature", "operating_points") if k not in data]
    if missing:
        raise OperatingPointsError(f"{path}: lacks {missing}; rerun the calibrate stage")
    for name, record in data["operating_points"].items():
        unknown = set(record.get("positive", [])) - set(classes)
        if unknown:
            raise OperatingPointsError(f"{path}: operating points {name} name classes "
                                       f"{sorted(unknown)} not in {classes}; rerun calibrate")
    return float(data["temperature"]), data["operating_points"]


def rates_with_intervals(positive: np.ndarray, called: np.ndarray, groups: np.ndarray,
                         ci_level: float) -> dict:
    """Sensitivity, specificity, PPV, NPV with grouped Clopper-Pearson intervals and counts."""
    cells = {"sensitivity": (called, positive), "specificity": (~called, ~positive),
             "ppv": (positive, called), "npv": (~positive, ~called)}
    return {rate: proportion_interval(hit[among], groups[among], ci_level)
            for rate, (hit, among) in cells.items()}


def _undefined() -> dict:
    """Test rates of a point that has no threshold."""
    return {r: {"value": None, "ci_low": None, "ci_high": None} for r in RATES}


def evaluate_operating_points(fitted: dict, test: Predictions, classes: list[str],
                              ci_level: float) -> dict:
    """``fitted`` with each point's test rates added (its thresholds on ``test.probs``, which
    must be on the fitted scale)."""
    out = {}
    for name, record in fitted.items():
        out[name] = dict(record)
        if "skipped" in record:
            continue
        task = task_from_record(record, classes)
        positive, scores = task.labels(test.y_true), task.scores(test.probs)
        for key in POINTS:
            threshold = record[key]["threshold"]
            out[name][key] = {**record[key], "test": _undefined() if threshold is None
                              else rates_with_intervals(positive, scores >= threshold,
                                                        test.groups, ci_level)}
    return out


# What each quoted rate is, beside every served decision.
RATES_NOTE = ("val_sensitivity/val_specificity: measured on the validation images the threshold "
              "was chosen on (optimistic); test_rates: the held-out test split at the same "
              "threshold, with intervals (analyze stage)")


def read_test_rates(path: str | Path, fitted: dict) -> dict:
    """{task: {sensitivity, specificity, ci_level, method, source}}: the test rates the analyze
    stage measured (its metrics file, ``metrics/analysis.json``) at each task's decision point
    of ``fitted`` (a checkpoint's operating points). Refused when the file measured another
    threshold: its rates would belong to another model or calibration."""
    try:
        data = json.loads(Path(path).read_text())
        measured, level = data["operating_points"], data["ci_level"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise OperatingPointsError(f"{path}: not the analyze stage's metrics file "
                                   f"({type(exc).__name__}: {exc}); run `dvc repro analyze`") from exc
    out = {}
    for name, record in fitted.items():
        if "skipped" in record:
            continue
        threshold = record[record["decision"]]["threshold"]
        point = measured.get(name, {}).get(record["decision"], {})
        if point.get("threshold") != threshold or "test" not in point:
            raise OperatingPointsError(
                f"{path}: {name} was measured on test at threshold {point.get('threshold')}, but "
                f"the checkpoint decides at {threshold}: that file belongs to another checkpoint; "
                "rerun analyze for this one (`dvc repro analyze`)")
        out[name] = {"sensitivity": point["test"]["sensitivity"],
                     "specificity": point["test"]["specificity"], "ci_level": level,
                     "method": data.get("methods", {}).get("operating_points"),
                     "source": str(path)}
    return out


def decide(fitted: dict, probs: np.ndarray, classes: list[str],
           test_rates: dict | None = None) -> dict:
    """Per task, one image's decision at the shipped operating point: {positive, score,
    threshold, operating_point, scale, val_sensitivity, val_specificity, test_rates,
    rates_note}; ``test_rates`` from ``read_test_rates`` (None: not quoted). ``probs`` must be
    on the fitted scale. A task without a threshold gets {positive: None, note}."""
    out = {}
    for name, record in fitted.items():
        if "skipped" in record:
            continue
        point = record[record["decision"]]
        common = {"operating_point": record["decision"], "scale": record["scale"],
                  "threshold": point["threshold"]}
        if point["threshold"] is None:
            out[name] = {"positive": None, **common, "note": point["note"]}
            continue
        score = float(task_from_record(record, classes).scores(probs))
        out[name] = {"positive": score >= point["threshold"], "score": score, **common,
                     "val_sensitivity": point["val"]["sensitivity"],
                     "val_specificity": point["val"]["specificity"],
                     "test_rates": (test_rates or {}).get(name), "rates_note": RATES_NOTE}
    return out
