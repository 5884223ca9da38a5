"""Explain stage: Grad-CAM localization and faithfulness on the test set, gallery, summary page."""
import argparse
import logging
from pathlib import Path

import numpy as np

from assurexray.console import run_main
from assurexray.data.datasets import CachedDataset
from assurexray.data.schema import DatasetInfo
from assurexray.errors import AssureXRayError
from assurexray.evaluation.predictions import read_predictions, write_json
from assurexray.explain import cam, gallery, localization
from assurexray.inference.runner import load_for_inference
from assurexray.params import load_params
from assurexray.reporting.render import header, render

log = logging.getLogger("explain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "model", "cache", "predictions", "info", "metrics", "gallery",
                 "summary"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    ex = params.explain
    model, meta, cache, transform, _ = load_for_inference(args.model, args.cache)
    preds = read_predictions(args.predictions)
    if preds.classes != meta.classes:
        raise AssureXRayError(f"{args.predictions}: classes {preds.classes} differ from the model's "
                               f"{meta.classes}; rerun the evaluate stage")

    # Localization over every test image with a cached lesion annotation.
    annotated = np.array([bool(cache.lesions(i)) for i in preds.image_ids])
    ids, y_true, y_pred = (a[annotated] for a in (preds.image_ids, preds.y_true, preds.y_pred))
    log.info("%d of %d test images have lesion annotations", len(ids), len(preds.image_ids))
    if not len(ids):
        raise AssureXRayError(f"{args.predictions}: no test image has a cached lesion annotation, so "
                               "there is nothing to localize (does the data source provide boxes?)")
    cams_true, cams_pred = cam.true_and_predicted_cams(model, cache, ids, y_true, y_pred,
                                                       transform, ex.method, ex.batch_size)
    lesions, content = localization.model_frame_annotations(cache, ids, meta.image_size)
    truth = ([meta.classes[t] for t in y_true], list(y_true == y_pred), meta.classes)
    localization_metrics = {
        target: localization.localization_summary(maps, lesions, content, ex.cam_threshold, *truth)
        for target, maps in (("true_class", cams_true), ("predicted_class", cams_pred))}
    sub = cam.road_subset(len(ids), ex.road_images, params.seed)
    road = cam.road_scores(model, CachedDataset(cache, ids[sub], y_true[sub], transform),
                           cams_true[sub], y_true[sub], ex.road_percentiles, ex.batch_size,
                           params.seed)

    cases = gallery.select_cases(preds, ex.per_class)
    gallery.write_gallery(model, cache, transform, cases, meta.classes, args.gallery,
                          ex.method, ex.batch_size)
    metrics = {"method": ex.method, "cam_threshold": ex.cam_threshold,
               "n_test": len(preds.image_ids), "n_annotated": len(ids),
               "localization": localization_metrics,
               "faithfulness": {"road": cam.road_summary(road, ex.road_percentiles)},
               "gallery": {"n_images": len(cases)}}
    write_json(args.metrics, metrics)
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(render(
        "gradcam_summary.md.j2", **gallery.summary_context(metrics, cases, args.gallery, args.summary),
        header=header("Grad-CAM summary", "the explain stage (`stages/explain.py`, `dvc repro explain`)",
                      "`metrics/explain.json`", DatasetInfo.load(args.info).source)))
    overall = localization_metrics["true_class"]["overall"]
    log.info("true-class CAM on %d images: pointing game %.3f (chance %.3f), energy %.3f, "
             "ROAD combined %.3f", overall["n"], overall["pointing_game"], overall["chance"],
             overall["energy_pointing"], metrics["faithfulness"]["road"]["combined"])


if __name__ == "__main__":
    run_main(main)
