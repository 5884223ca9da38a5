"""The anomaly models (autoencoders, feature detectors) beside the classifier, image for image,
on the same test images.

The classifier's tumour-vs-normal score is 1 - P(Normal) from its test predictions. Every model
is resampled with the same grouped bootstrap weights (a function of the test table only), so
the AUC difference to the classifier gets a paired interval. Localization sets the anomaly
maps' figures beside Grad-CAM's (true-class CAM, ``metrics/explain.json``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from assurexray.anomaly.evaluation import auc_interval, resample_weights
from assurexray.errors import AssureXRayError
from assurexray.evaluation.bootstrap import summarize
from assurexray.evaluation.curves import curve_rows
from assurexray.evaluation.metrics import weighted_auc
from assurexray.evaluation.predictions import SplitPredictions
from assurexray.params import AnalysisParams

CLASSIFIER = "classifier"


class ComparisonError(AssureXRayError, ValueError):
    """The models to compare did not score the same test images (or lack a normal class)."""

LOCALIZATION_KEYS = ("n", "pointing_game", "chance", "energy_pointing", "iou_box", "iou_polygon")


def classifier_scores(preds: SplitPredictions, image_ids: list[str], normal: str) -> np.ndarray:
    """1 - P(normal) of the classifier for ``image_ids`` (all must be predicted)."""
    if normal not in preds.classes:
        raise ComparisonError(f"classifier classes {preds.classes} lack '{normal}'")
    score = pd.Series(1 - preds.probs()[:, preds.classes.index(normal)], index=preds.image_ids)
    missing = sorted(set(image_ids) - set(score.index))
    if missing:
        raise ComparisonError(f"the classifier has no test prediction for {len(missing)} image(s) "
                              f"the anomaly models scored, e.g. {missing[:3]}; rerun evaluate")
    return score.loc[image_ids].to_numpy(float)


def model_scores(tables: dict[str, pd.DataFrame], evaluations: dict[str, dict],
                 classifier: np.ndarray | None) -> dict[str, np.ndarray]:
    """Each model's primary test score, in the first table's image order (checked shared)."""
    ids = next(iter(tables.values()))["image_id"].tolist()
    out = {}
    for arch, table in tables.items():
        if table["image_id"].tolist() != ids:
            raise ComparisonError(f"the {arch} model scored other test images; rerun "
                                  "anomaly_evaluate and anomaly_detect for every model")
        out[arch] = table[evaluations[arch]["primary_score"]].to_numpy(float)
    if classifier is not None:
        out[CLASSIFIER] = classifier
    return out


def comparison(tables: dict[str, pd.DataFrame], evaluations: dict[str, dict],
               classifier: np.ndarray | None, gradcam: dict | None, normal: str,
               analysis: AnalysisParams, seed: int) -> dict:
    """{model: auc, auc_by_class, auc_minus_classifier, localization} for every model."""
    test = next(iter(tables.values()))
    weights = resample_weights(test, normal, analysis.bootstrap_iterations, seed)
    positive = (test["label"] != normal).to_numpy()
    scores = model_scores(tables, evaluations, classifier)
    aucs = {m: weighted_auc(positive, s, weights) for m, s in scores.items()}
    out = {}
    for model, s in scores.items():
        by_class = {c: auc_interval(positive[keep], s[keep], weights[:, keep], analysis.ci_level)
                    for c in sorted(set(test["label"]) - {normal})
                    for keep in [((test["label"] == c) | ~positive).to_numpy()]}
        loc = (gradcam or {}) if model == CLASSIFIER else evaluations[model]["localization"]["overall"]
        out[model] = {"score": "1 - P(Normal)" if model == CLASSIFIER else
                      evaluations[model]["primary_score"],
                      "auc": summarize(aucs[model], analysis.ci_level), "auc_by_class": by_class,
                      "localization": {k: loc.get(k) for k in LOCALIZATION_KEYS}}
        if CLASSIFIER in aucs and model != CLASSIFIER:
            out[model]["auc_minus_classifier"] = summarize(aucs[model] - aucs[CLASSIFIER],
                                                           analysis.ci_level)
    return out


def curves(tables: dict[str, pd.DataFrame], evaluations: dict[str, dict],
           classifier: np.ndarray | None, normal: str) -> tuple[list[dict], list[dict]]:
    """ROC and PR rows (tumour vs normal) with the model name in ``class`` (DVC by_class)."""
    test = next(iter(tables.values()))
    positive = (test["label"] != normal).to_numpy(int)
    roc, pr = [], []
    for model, s in model_scores(tables, evaluations, classifier).items():
        # curve_rows draws one-vs-rest curves per class: keep the tumour class's
        r, p = curve_rows(positive, np.column_stack([-s, s]), ["normal", model])
        roc += [row for row in r if row["class"] == model]
        pr += [row for row in p if row["class"] == model]
    return roc, pr


def comparison_context(comp: dict, evaluations: dict[str, dict]) -> dict:
    """Plain values for ``reporting/templates/anomaly_comparison.md.j2`` (numbers unformatted:
    the template's filters format them)."""
    classes = sorted({c for m in comp.values() for c in m["auc_by_class"]})
    models = [{"name": name, "score": m["score"], "auc": m["auc"],
               "auc_minus_classifier": m.get("auc_minus_classifier"),
               "by_class": [m["auc_by_class"].get(c) for c in classes],
               "localization": m["localization"]} for name, m in comp.items()]
    identity = [{"arch": arch, **{k: ev["identity"][k] for k in
                                  ("n", "lesion_copy", "error_ratio", "pointing_game", "chance")}}
                for arch, ev in evaluations.items() if "identity" in ev]   # autoencoders only
    return {"classes": classes, "models": models, "identity": identity,
            "detectors": [detector_row(name, ev) for name, ev in evaluations.items()
                          if "selection" in ev]}


def detector_row(name: str, evaluation: dict) -> dict:
    """A feature detector's validation choice (the best candidate's validation AUC among all
    of them) and its cost on disk."""
    tried = [c for c in evaluation["selection"] if "val_auc" in c]
    config = evaluation["config"]
    return {"name": name, "image_size": config["image_size"], "layers": config["layers"],
            "aggregation": config["aggregation"],
            "settings": {k: config[k] for k in ("coreset_ratio", "k", "bank_patches", "dims")
                         if k in config},
            "val_auc": max(c["val_auc"] for c in tried),
            "val_auc_range": [min(c["val_auc"] for c in tried), max(c["val_auc"] for c in tried)],
            "candidates": len(evaluation["selection"]), "state_mb": evaluation["state_mb"],
            "file_mb": evaluation["file_mb"]}
