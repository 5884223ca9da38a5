"""Split stage: patient-grouped train/val/test image ids (stratified or center holdout)."""
import argparse
import json
import logging
from pathlib import Path

from assurexray.console import run_main
from assurexray.data.schema import DatasetInfo, read_index, read_quality
from assurexray.data.splits import make_split, split_metrics, write_split
from assurexray.params import load_params

log = logging.getLogger("split")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "index", "quality", "info", "out", "metrics"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    options = params.split_options
    index, quality = read_index(args.index), read_quality(args.quality)
    classes = DatasetInfo.load(args.info).classes
    frame = make_split(index, quality, classes, params.split, options.fractions,
                       options.train_centers, options.center_val_fraction, params.seed)
    write_split(frame, args.out)
    metrics = split_metrics(frame, quality, classes)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("split=%s: %s images in %s groups -> train %d, val %d, test %d", params.split,
             metrics["images"]["usable"], metrics["groups"]["total"],
             *(metrics[p]["images"] for p in ("train", "val", "test")))


if __name__ == "__main__":
    run_main(main)
