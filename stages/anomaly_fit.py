"""Anomaly fit stage: fit one feature detector (PatchCore or PaDiM) on the train normals'
features, choosing image size, layers, detector settings and the score's aggregation on
validation; the decision threshold is validation's Youden point. Test is not read."""
import argparse
import logging
import time
from pathlib import Path

from assurexray.anomaly.checkpoint import save_not_trained
from assurexray.anomaly.data import AbnormalImageError, normal_index, not_applicable_reason
from assurexray.anomaly.detector import DETECTORS, aggregate, patch_maps, save_detector, state_bytes
from assurexray.anomaly.features import check_train_normals, load_features
from assurexray.anomaly.selection import select
from assurexray.console import run_main
from assurexray.data.datasets import read_split
from assurexray.data.schema import DatasetInfo
from assurexray.evaluation.operating_points import choose_thresholds
from assurexray.params import load_params, to_dict

log = logging.getLogger("anomaly_fit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--detector", required=True, choices=DETECTORS)
    for name in ("params", "features", "splits", "info", "model"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    an = params.anomaly
    classes = DatasetInfo.load(args.info).classes
    reason = not_applicable_reason(classes)
    if reason:
        save_not_trained(args.model, reason)
        log.warning("%s: not fitted: %s", args.detector, reason)
        return
    normal = normal_index(classes)
    train_ids, train_labels = read_split(args.splits / "train.csv", classes)
    val_ids, val_labels = read_split(args.splits / "val.csv", classes)
    levels = sorted({lv for layers in an.features.layer_sets for lv in layers})
    started = time.perf_counter()
    by_size, source = {}, {}
    for size in an.features.image_sizes:
        path = args.features / f"{size}.npz"
        maps, ids, source = load_features(path, levels)
        check_train_normals(ids["train"], train_ids, train_labels, normal, path)
        if ids["val"] != val_ids:
            raise AbnormalImageError(f"{path}: validation ids differ from the split; rerun "
                                     "anomaly_features")
        by_size[size] = maps
    positive = val_labels != normal
    config, state, candidates = select(args.detector, an, by_size, positive, params.seed)
    val_scores = aggregate(patch_maps(config, state, by_size[config["image_size"]]["val"]),
                           config["aggregation"], config["topk_percent"])
    youden = choose_thresholds(positive, val_scores, params.analysis.sensitivity_target,
                               params.analysis.specificity_target)["youden"]["threshold"]
    meta = {"detector": args.detector, "arch": args.detector,
            "score": {"primary": config["aggregation"]}, "config": config,
            "extractor": {k: source[k] for k in ("backbone", "init", "package", "version", "file",
                                                 "sha256")},
            "cache_size": source["cache_size"], "classes": list(classes),
            "normal_class": classes[normal], "threshold": youden,
            "selection": candidates, "n_train_normals": len(by_size[config["image_size"]]
                                                           ["train"][levels[0]]),
            "state_mb": state_bytes(state) / 2 ** 20,
            "params": to_dict(params), "split": params.split}
    save_detector(args.model, state, meta)
    chosen = max(c.get("val_auc", -1) for c in candidates)
    log.info("%s: chose %s (validation AUC %.3f of %d candidates); state %.1f MB; %.0f s",
             args.detector, config, chosen, len(candidates), meta["state_mb"],
             time.perf_counter() - started)


if __name__ == "__main__":
    run_main(main)
