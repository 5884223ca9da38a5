"""Explain stage: the Grad-CAM layer chosen on validation, localization and faithfulness on the
test set, gallery, summary page."""
import argparse
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from assurexray.console import run_main
from assurexray.data.datasets import CachedDataset
from assurexray.data.schema import DatasetInfo
from assurexray.errors import AssureXRayError
from assurexray.evaluation.applicability import not_applicable
from assurexray.evaluation.bootstrap import GroupedResampling, groups_of, read_groups
from assurexray.evaluation.predictions import SplitPredictions, read_predictions
from assurexray.explain import cam, cam_gallery, layer_selection, localization
from assurexray.explain.localization import INTERVAL_METHODS
from assurexray.inference.runner import load_for_inference
from assurexray.jsonio import write_json
from assurexray.params import load_params
from assurexray.reporting.render import header, render
from assurexray.training.models import cam_candidate_layers

log = logging.getLogger("explain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "model", "cache", "predictions", "val_predictions", "groups", "info",
                 "metrics", "gallery", "summary"):
        parser.add_argument(f"--{name.replace('_', '-')}", required=True, type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    ex = params.explain
    model, meta, cache, transform, _ = load_for_inference(args.model, args.cache)
    preds, val = (read_predictions(path) for path in (args.predictions, args.val_predictions))
    for path, table in ((args.predictions, preds), (args.val_predictions, val)):
        if table.classes != meta.classes:
            raise AssureXRayError(f"{path}: classes {table.classes} differ from the model's "
                                  f"{meta.classes}; rerun the evaluate stage")

    val_ids, val_true, _ = annotated(cache, val)
    choice = layer_selection.select_layer(
        model, cache, val_ids, val_true, transform, cam_candidate_layers(model),
        method=ex.method, batch_size=ex.batch_size, image_size=meta.image_size,
        threshold=ex.cam_threshold, max_images=ex.layer_images, seed=params.seed)
    layer = choice["selected_layer"]
    log.info("CAM layer %s (%s, %d validation images)", layer, choice["selected_by"],
             choice["n_validation"])

    ids, y_true, y_pred = annotated(cache, preds)
    log.info("%d of %d test images have lesion annotations", len(ids), len(preds.image_ids))
    if len(ids):
        resampling = GroupedResampling(groups_of(ids, read_groups(args.groups), args.predictions),
                                       y_true, params.analysis.bootstrap_iterations,
                                       params.analysis.ci_level, params.seed)
        localization_metrics, road = localize_test_set(model, meta, cache, transform, ids,
                                                       y_true, y_pred, layer, params, resampling)
    else:  # e.g. a source without boxes: the metrics and the summary say why
        localization_metrics = road = not_applicable(
            f"none of the {len(preds.image_ids)} test images has a usable lesion annotation "
            "(box) to score the maps against")

    cases = cam_gallery.select_cases(preds, ex.per_class)
    cam_gallery.write_gallery(model, cache, transform, cases, meta.classes, args.gallery,
                          ex.method, ex.batch_size, layer)
    metrics = {"method": ex.method, "cam_threshold": ex.cam_threshold,
               "layer_selection": choice,
               "n_test": len(preds.image_ids), "n_annotated": len(ids),
               "localization": localization_metrics,
               "interval_methods": INTERVAL_METHODS,
               "faithfulness": {"road": road},
               "gallery": {"n_images": len(cases)}}
    write_json(args.metrics, metrics)
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(render(
        "gradcam_summary.md.j2", **cam_gallery.summary_context(metrics, cases, args.gallery, args.summary),
        header=header("Grad-CAM summary", "the explain stage (`stages/explain.py`, `dvc repro explain`)",
                      "`metrics/explain.json`", DatasetInfo.load(args.info).source)))


def annotated(cache, preds: SplitPredictions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image ids, true, predicted class) of the images with a cached lesion annotation."""
    keep = np.array([bool(cache.lesions(i)) for i in preds.image_ids], dtype=bool)
    return preds.image_ids[keep], preds.y_true[keep], preds.y_pred[keep]


def localize_test_set(model, meta, cache, transform, ids, y_true, y_pred, layer: str,
                      params, resampling: GroupedResampling) -> tuple[dict, dict]:
    """Localization of the true- and predicted-class CAMs of the annotated test images, and
    ROAD of the true-class CAMs on a seeded sample of them, all with the chosen ``layer``;
    intervals resample patient groups (``resampling``, aligned with ``ids``)."""
    ex = params.explain
    cams_true, cams_pred = cam.true_and_predicted_cams(model, cache, ids, y_true, y_pred,
                                                       transform, ex.method, ex.batch_size, layer)
    lesions, content = localization.model_frame_annotations(cache, ids, meta.image_size)
    truth = ([meta.classes[t] for t in y_true], list(y_true == y_pred), meta.classes)
    localization_metrics = {
        target: localization.localization_summary(maps, lesions, content, ex.cam_threshold, *truth,
                                                  resampling)
        for target, maps in (("true_class", cams_true), ("predicted_class", cams_pred))}
    sub = cam.seeded_subset(len(ids), ex.road_images, params.seed)
    road = cam.road_scores(model, CachedDataset(cache, ids[sub], y_true[sub], transform),
                           cams_true[sub], [content[i] for i in sub], y_true[sub],
                           ex.road_percentiles, ex.batch_size, params.seed)
    summary = cam.road_summary(road, ex.road_percentiles,
                               replace(resampling.subset(sub), iterations=ex.road_bootstrap))
    overall = localization_metrics["true_class"]["overall"]
    log.info("true-class CAM on %d images: pointing game %.3f (chance %.3f), energy %.3f, "
             "ROAD combined %.3f [%s, %s]", overall["n"], overall["pointing_game"],
             overall["chance"], overall["energy_pointing"], summary["combined"],
             summary["combined_ci_low"], summary["combined_ci_high"])
    return localization_metrics, summary


if __name__ == "__main__":
    run_main(main)
