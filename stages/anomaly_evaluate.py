"""Anomaly evaluate stage: score validation and test with one autoencoder; AUCs with intervals,
validation-chosen thresholds, localization against the lesion annotations, identity check,
gallery."""
import argparse
import logging
from pathlib import Path

import numpy as np

from assurexray.anomaly import map_gallery
from assurexray.anomaly.checkpoint import NotTrained, check_cache_size, load_autoencoder
from assurexray.anomaly.data import input_tensors
from assurexray.anomaly.evaluation import evaluate_scores, headline, localization, score_table
from assurexray.anomaly.identity import identity_check
from assurexray.anomaly.models import ARCHS, count_parameters
from assurexray.anomaly.scoring import score_inputs
from assurexray.console import run_main
from assurexray.data.cache import ImageCache
from assurexray.data.datasets import read_split
from assurexray.data.schema import read_index
from assurexray.evaluation.applicability import not_applicable
from assurexray.evaluation.bootstrap import read_groups
from assurexray.explain.localization import model_frame_annotations
from assurexray.jsonio import write_json
from assurexray.params import load_params
from assurexray.training.models import default_device

log = logging.getLogger("anomaly_evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", required=True, choices=ARCHS)
    for name in ("params", "model", "cache", "splits", "index", "out", "plots"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    device = default_device()
    try:
        model, meta = load_autoencoder(args.model, device)
    except NotTrained as exc:   # e.g. no 'Normal' class: the summary renders the reason
        write_json(args.out / "evaluation.json", not_applicable(exc.reason))
        args.plots.mkdir(parents=True, exist_ok=True)
        log.warning("%s", exc)
        return
    cache = ImageCache(args.cache)
    check_cache_size(meta, cache, args.cache)
    classes, size, bs = meta.classes, meta.image_size, params.anomaly.batch_size
    normal, primary = meta.normal_class, meta.score["primary"]
    groups, index = read_groups(args.splits / "groups.csv"), read_index(args.index)
    args.out.mkdir(parents=True, exist_ok=True)
    tables, results, inputs = {}, {}, {}
    for part in ("val", "test"):
        ids, labels = read_split(args.splits / f"{part}.csv", classes)
        inputs[part] = input_tensors(cache, ids, size)
        results[part] = score_inputs(model, inputs[part], meta.score, bs, device)
        tables[part] = score_table(ids, labels, classes, groups, index, results[part].scores)
        tables[part].to_csv(args.out / f"{part}.csv", index=False)
    metrics = {"arch": args.arch, "parameters": count_parameters(model), "config": meta.config,
               "image_size": size, "noise_std": meta.noise_std,
               "epoch": meta.epoch, "best_val_loss": meta.best_val_loss,
               **evaluate_scores(tables["val"], tables["test"], normal, primary, params.analysis,
                                 params.seed)}
    test, res = tables["test"], results["test"]
    youden = metrics["operating_points"]["youden"]["threshold"]
    flagged = (test[primary].to_numpy() >= youden if youden is not None
               else np.zeros(len(test), bool))
    metrics["localization"] = localization(cache, test, res.maps, flagged, classes, size,
                                           params.explain.cam_threshold)

    # Identity check on a seeded subset of the validation normals (the model never saw them).
    normals = np.flatnonzero((tables["val"]["label"] == normal).to_numpy())
    rows = np.sort(np.random.default_rng(params.seed).permutation(normals)[
        :params.anomaly.identity_lesions])
    metrics["identity"] = identity_check(model, inputs["val"][rows], meta.score, bs,
                                         params.seed, device)
    write_json(args.out / "evaluation.json", metrics)

    lesions, _ = model_frame_annotations(cache, test["image_id"].tolist(), size)
    cases = map_gallery.select_cases(test, normal, primary, params.anomaly.gallery)
    map_gallery.write_gallery(args.plots, test, cases, inputs["test"][:, 0].numpy(),
                          res.reconstructions, res.maps, lesions, args.arch, primary)
    log.info("%s; lesion copy %.2f", headline(args.arch, primary, metrics),
             metrics["identity"]["lesion_copy"])


if __name__ == "__main__":
    run_main(main)
