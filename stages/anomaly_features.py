"""Anomaly features stage: frozen pretrained backbone features of the train normals, validation
and test images at every candidate size, shared by the feature detectors (anomaly_fit,
anomaly_detect). Train images other than normals are never read."""
import argparse
import logging
import time
from pathlib import Path

from assurexray.anomaly.data import not_applicable_reason
from assurexray.anomaly.features import PARTS, FeatureExtractor, save_features, split_features
from assurexray.console import run_main
from assurexray.data.cache import ImageCache
from assurexray.data.datasets import read_split
from assurexray.data.schema import DatasetInfo
from assurexray.evaluation.applicability import not_applicable
from assurexray.jsonio import write_json
from assurexray.params import load_params

log = logging.getLogger("anomaly_features")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "cache", "splits", "info", "out"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    ft = params.anomaly.features
    classes = DatasetInfo.load(args.info).classes
    reason = not_applicable_reason(classes)
    if reason:   # the fit stage passes the reason on
        write_json(args.out / "features.json", not_applicable(reason))
        log.warning("no features: %s", reason)
        return
    splits = {part: read_split(args.splits / f"{part}.csv", classes) for part in PARTS}
    cache = ImageCache(args.cache)
    levels = sorted({lv for layers in ft.layer_sets for lv in layers})
    extractor = FeatureExtractor(ft.backbone, ft.init, ft.weights_path, levels)
    started = time.perf_counter()
    for size in ft.image_sizes:
        maps, ids = split_features(extractor, cache, splits, classes, size, ft.batch_size)
        meta = {**extractor.source, "image_size": size, "levels": levels,
                "cache_size": cache.size}
        save_features(args.out / f"{size}.npz", maps, ids, meta)
        log.info("%d px: features of %s images", size,
                 ", ".join(f"{len(v)} {p}" for p, v in ids.items()))
    write_json(args.out / "features.json", {
        **extractor.source, "levels": levels, "image_sizes": ft.image_sizes,
        "images": {p: len(v) for p, v in ids.items()}})
    log.info("extracted in %.0f s", time.perf_counter() - started)


if __name__ == "__main__":
    run_main(main)
