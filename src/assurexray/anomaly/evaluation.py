"""Normal-vs-abnormal evaluation of one autoencoder's scores, with the classifier's rigour.

Scores of the validation and test images are a table (``image_id, label, group, center`` and
one column per score). On test: AUCs with the grouped stratified bootstrap interval, per abnormal
class (against the normals) and per center, all from the same resample weights; thresholds are
chosen on validation (Youden, sensitivity and specificity targets, as the classifier's operating
points) and only applied to test, where their rates get the classifier's grouped intervals.
The anomaly maps of annotated test images are scored with the explain stage's localization
code, so they sit in one table with Grad-CAM.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from assurexray.anomaly.scoring import SCORES
from assurexray.evaluation.bootstrap import bootstrap_weights, summarize
from assurexray.evaluation.metrics import binary_rates, weighted_auc
from assurexray.evaluation.operating_points import RATES, choose_thresholds, rates_with_intervals
from assurexray.explain.localization import grouped_summary, model_frame_annotations, score_cam
from assurexray.params import AnalysisParams


def score_table(image_ids, labels: np.ndarray, classes: list[str], groups: pd.Series,
                index: pd.DataFrame, scores: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per image: id, class name, patient group, center, every score of ``scores``."""
    centers = index.set_index("image_id")["center"]
    frame = pd.DataFrame({"image_id": list(image_ids),
                          "label": [classes[i] for i in labels],
                          "group": groups.loc[list(image_ids)].to_numpy(),
                          "center": centers.loc[list(image_ids)].astype(str).to_numpy()})
    for name, values in scores.items():
        frame[name] = values
    return frame


def resample_weights(frame: pd.DataFrame, normal: str, n_iter: int, seed: int) -> np.ndarray:
    """(1 + B, n) grouped bootstrap weights stratified by normal/abnormal; a function of the
    table's rows only, so every consumer of the same test images resamples identically."""
    return bootstrap_weights(frame["group"].to_numpy(), (frame["label"] != normal).to_numpy(int),
                             n_iter, seed)


def auc_interval(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray,
                 ci_level: float) -> dict:
    return {**summarize(weighted_auc(positive, scores, weights), ci_level),
            "n_positive": int(positive.sum()), "n_negative": int((~positive).sum())}


def operating_points(val: pd.DataFrame, test: pd.DataFrame, normal: str, score: str,
                     analysis: AnalysisParams) -> dict:
    """Thresholds on the validation scores (the classifier's choices), their validation rates,
    and their test rates with the project's grouped intervals."""
    val_pos, test_pos = (val["label"] != normal).to_numpy(), (test["label"] != normal).to_numpy()
    val_s, test_s = val[score].to_numpy(float), test[score].to_numpy(float)
    out: dict[str, Any] = {"score": score}
    for key, choice in choose_thresholds(val_pos, val_s, analysis.sensitivity_target,
                                         analysis.specificity_target).items():
        threshold = choice["threshold"]
        if threshold is None:
            out[key] = {**choice, "val": None, "test": None}
            continue
        rates = binary_rates(val_pos, val_s >= threshold)
        out[key] = {**choice,
                    "val": {r: float(rates[r]) if np.isfinite(rates[r]) else None for r in RATES},
                    "test": rates_with_intervals(test_pos, test_s >= threshold,
                                                 test["group"].to_numpy(), analysis.ci_level)}
    return out


def evaluate_scores(val: pd.DataFrame, test: pd.DataFrame, normal: str, primary: str,
                    analysis: AnalysisParams, seed: int,
                    score_names: Sequence[str] = SCORES) -> dict:
    """AUCs (every score; per class and center for the primary one) and operating points."""
    weights = resample_weights(test, normal, analysis.bootstrap_iterations, seed)
    positive = (test["label"] != normal).to_numpy()
    ci = analysis.ci_level
    out = {"primary_score": primary, "n_test": len(test),
           "auc": {s: auc_interval(positive, test[s].to_numpy(float), weights, ci) for s in score_names}}
    scores = test[primary].to_numpy(float)
    out["auc_by_class"] = {
        c: auc_interval(positive[keep], scores[keep], weights[:, keep], ci)
        for c in sorted(set(test["label"]) - {normal})
        for keep in [((test["label"] == c) | ~positive).to_numpy()]}
    out["auc_by_center"] = {
        c: auc_interval(positive[keep], scores[keep], weights[:, keep], ci)
        for c in sorted(set(test["center"]))
        for keep in [(test["center"] == c).to_numpy()]}
    out["operating_points"] = operating_points(val, test, normal, primary, analysis)
    return out


def localization(cache, test: pd.DataFrame, maps: np.ndarray, flagged: np.ndarray,
                 classes: list[str], size: int, threshold: float) -> dict:
    """The explain stage's scores for the anomaly maps of annotated test images; 'correct' means
    flagged as anomalous at the validation Youden threshold."""
    ids = test["image_id"].tolist()
    annotated = np.array([bool(cache.lesions(i)) for i in ids])
    keep = np.flatnonzero(annotated)
    lesions, content = model_frame_annotations(cache, [ids[i] for i in keep], size)
    scores = [score_cam(maps[i], les, box, threshold) for i, les, box in zip(keep, lesions, content)]
    out = grouped_summary(scores, test["label"].to_numpy()[keep].tolist(), list(flagged[keep]),
                          classes)
    return {"map_threshold": threshold, "correct_means": "flagged at the validation Youden threshold",
            **out}



def headline(name: str, primary: str, metrics: dict) -> str:
    """One log line of a model's test figures: the AUC with its interval, the pointing game."""
    auc, loc = metrics["auc"][primary], metrics["localization"]["overall"]
    pointing, chance = (("n/a" if v is None else f"{v:.3f}")
                        for v in (loc["pointing_game"], loc["chance"]))
    return (f"{name}: test AUC ({primary}) {auc['value']:.3f} ({auc['ci_low']:.3f}-"
            f"{auc['ci_high']:.3f}); pointing game {pointing} (chance {chance})")
