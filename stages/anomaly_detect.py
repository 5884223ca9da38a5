"""Anomaly detect stage: score validation and test with one fitted feature detector (from the
shared features); AUCs with intervals, validation-chosen thresholds, localization of the
anomaly maps against the lesion annotations, gallery. Test is scored here, once."""
import argparse
import logging
from pathlib import Path

import numpy as np

from assurexray.anomaly import map_gallery
from assurexray.anomaly.checkpoint import NotTrained
from assurexray.anomaly.data import input_tensors
from assurexray.anomaly.detector import AGGREGATIONS, DETECTORS, load_detector, result
from assurexray.anomaly.evaluation import evaluate_scores, headline, localization, score_table
from assurexray.anomaly.features import FeatureFileError, load_features
from assurexray.console import run_main
from assurexray.data.cache import ImageCache
from assurexray.data.datasets import read_split
from assurexray.data.schema import read_index
from assurexray.evaluation.applicability import not_applicable
from assurexray.evaluation.bootstrap import read_groups
from assurexray.explain.localization import model_frame_annotations
from assurexray.jsonio import write_json
from assurexray.params import load_params

log = logging.getLogger("anomaly_detect")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--detector", required=True, choices=DETECTORS)
    for name in ("params", "model", "features", "cache", "splits", "index", "out", "plots"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    try:
        detector, meta = load_detector(args.model)
    except NotTrained as exc:   # e.g. no 'Normal' class: the summary renders the reason
        write_json(args.out / "evaluation.json", not_applicable(exc.reason))
        args.plots.mkdir(parents=True, exist_ok=True)
        log.warning("%s", exc)
        return
    config, classes, normal = detector.config, meta["classes"], meta["normal_class"]
    size, primary = config["image_size"], config["aggregation"]
    maps, ids, _ = load_features(args.features / f"{size}.npz", config["layers"])
    groups, index = read_groups(args.splits / "groups.csv"), read_index(args.index)
    args.out.mkdir(parents=True, exist_ok=True)
    tables, results = {}, {}
    for part in ("val", "test"):
        split_ids, labels = read_split(args.splits / f"{part}.csv", classes)
        if ids[part] != split_ids:
            raise FeatureFileError(f"{args.features}: {part} ids differ from the split; rerun "
                                   "anomaly_features")
        results[part] = result(config, detector.state, maps[part])
        tables[part] = score_table(split_ids, labels, classes, groups, index, results[part].scores)
        tables[part].to_csv(args.out / f"{part}.csv", index=False)
    metrics = {"arch": args.detector, "family": "pretrained features", "config": config,
               "extractor": meta["extractor"],
               "n_train_normals": meta["n_train_normals"], "state_mb": meta["state_mb"],
               "file_mb": args.model.stat().st_size / 2 ** 20, "selection": meta["selection"],
               **evaluate_scores(tables["val"], tables["test"], normal, primary, params.analysis,
                                 params.seed, AGGREGATIONS)}
    test, res = tables["test"], results["test"]
    youden = metrics["operating_points"]["youden"]["threshold"]
    flagged = (test[primary].to_numpy() >= youden if youden is not None
               else np.zeros(len(test), bool))
    cache = ImageCache(args.cache)
    metrics["localization"] = localization(cache, test, res.maps, flagged, classes, size,
                                           params.explain.cam_threshold)
    write_json(args.out / "evaluation.json", metrics)

    lesions, _ = model_frame_annotations(cache, test["image_id"].tolist(), size)
    cases = map_gallery.select_cases(test, normal, primary, params.anomaly.gallery)
    rows = sorted({i for _, _, i in cases})
    images = np.zeros((len(test), size, size), np.float32)   # only the gallery's are drawn
    images[rows] = input_tensors(cache, test["image_id"].iloc[rows].tolist(), size)[:, 0].numpy()
    map_gallery.write_gallery(args.plots, test, cases, images, None, res.maps, lesions,
                              args.detector, primary)
    log.info("%s", headline(args.detector, primary, metrics))


if __name__ == "__main__":
    run_main(main)
