"""Reference stage: the training reference for drift and out-of-distribution checks, evaluated.

Writes ``models/reference.npz`` (training image statistics, embedding summary, OOD scorer
fitted on train with its threshold set on validation) and ``metrics/ood.json``: AUROC and the
false-alarm rate at 95% recall of in-distribution test images against each generated
out-of-distribution set, beside the maximum-softmax and energy baselines, and the drift
test's false-alarm and detection rates over repeated windows. Research use only.
"""
import argparse
import logging
from pathlib import Path

import numpy as np

from assurexray import NOT_FOR_CLINICAL_USE
from assurexray.console import run_main
from assurexray.data.datasets import read_split
from assurexray.data.imageio import read_image
from assurexray.data.ood_sets import FAR_SETS, NEAR_SETS, generate_sets
from assurexray.data.schema import read_index
from assurexray.inference.classifier import Classifier
from assurexray.inference.monitoring import (
    build_reference,
    drift_error_rates,
    ood_evaluation,
    subset,
    summarize,
)
from assurexray.inference.reference import save_reference
from assurexray.jsonio import write_json
from assurexray.params import load_params

log = logging.getLogger("reference")

DRIFT_WINDOWS = 20
TARGETS = {"far_sets_auroc": 0.99, "near_sets_auroc": 0.90}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "model", "index", "splits", "reference", "metrics"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    classifier = Classifier.from_files(args.model, engine=params.inference.engine)
    classifier.ood_params = params.ood  # reject by the geometry limits this reference ships
    index = read_index(args.index).set_index("image_id")
    files = index["file"]
    ids, summaries, labels = {}, {}, {}
    for part in ("train", "val", "test"):
        ids[part], labels[part] = read_split(args.splits / f"{part}.csv", classifier.classes)
        summaries[part] = summarize(classifier, [files[i] for i in ids[part]],
                                    classifier.decode_file, params.reference.batch_size, desc=part)
        for reason in summaries[part].rejected:
            log.warning("%s image %s", part, reason)
    ref = build_reference(classifier.identity["checkpoint_sha256"], summaries["train"],
                          labels["train"], summaries["val"], params.reference, params.ood,
                          params.seed)
    save_reference(args.reference, ref)

    radiographs = [read_image(files[i]) for i in ids["test"][:params.ood.images_per_set]]
    blobs = generate_sets(radiographs, params.ood.images_per_set, params.seed)
    sets = {name: summarize(classifier, items, classifier.decode_bytes,
                            params.reference.batch_size, desc=name) for name, items in blobs.items()}
    metrics = {"notice": NOT_FOR_CLINICAL_USE,
               "method": "max of class-conditional Mahalanobis distance on embeddings and "
                         "k-nearest-neighbour distance on image content statistics, each "
                         "divided by its own validation threshold",
               "threshold": ref.scorer.threshold, "false_alarm_rate_target": params.ood.false_alarm_rate,
               "far_sets": list(FAR_SETS), "near_sets": list(NEAR_SETS), "targets": TARGETS,
               **ood_evaluation(ref.scorer, summaries["test"], sets,
                                {k: len(v) for k, v in blobs.items()}),
               "drift": drift_error_rates(ref, *drift_sets(index, ids, summaries, sets),
                                          params.serve.drift_window, DRIFT_WINDOWS,
                                          params.serve.drift_alpha, params.serve.drift_permutations,
                                          params.seed)}
    write_json(args.metrics, metrics)
    for name, result in metrics["sets"].items():
        log.info("%s: AUROC %.3f (max softmax %.3f, energy %.3f), flagged %.2f", name,
                 result["combined"]["auroc"], result["max_softmax"]["auroc"],
                 result["energy"]["auroc"], result["flagged_rate"])
    log.info("test in-distribution false alarms %.3f",
             metrics["in_distribution"]["false_alarm_rate"])


def drift_sets(index, ids: dict, summaries: dict, sets: dict):
    """(held-out images of the training centers or None, {shifted sets}): test images of the
    training centers (none under a center split: its test centers are all new, and the
    validation images are the reference itself), and as shifted sets the test images of
    centers never trained on, if any, and corrupted images."""
    seen = set(index.loc[ids["train"], "center"])
    test = summaries["test"]
    new = np.array([index.at[ids["test"][k], "center"] not in seen for k in test.kept], dtype=bool)
    held_out = subset(test, ~new) if (~new).sum() >= 2 else None
    shifted = {"new_center": subset(test, new)} if new.sum() >= 2 else {}
    return held_out, {**shifted, "corrupted": sets["corrupted"]}


if __name__ == "__main__":
    run_main(main)
