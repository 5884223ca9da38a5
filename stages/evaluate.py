"""Evaluate stage: predictions for val and test, test metrics, ROC/PR/confusion plot data."""
import argparse
import logging
from pathlib import Path

from assurexray.console import run_main
from assurexray.data.datasets import read_split
from assurexray.evaluation.curves import evaluation_metrics, write_plots
from assurexray.inference.runner import load_for_inference, predict_images
from assurexray.jsonio import write_json
from assurexray.params import load_params

log = logging.getLogger("evaluate")

PARTITIONS = ("val", "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "model", "cache", "splits", "predictions", "metrics", "plots"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    model, meta, cache, transform, device = load_for_inference(args.model, args.cache)
    args.predictions.mkdir(parents=True, exist_ok=True)
    partitions = {}
    for name in PARTITIONS:
        ids, labels = read_split(args.splits / f"{name}.csv", meta.classes)
        partitions[name] = predict_images(model, cache, ids, labels, meta.classes, transform,
                                          params.evaluate.batch_size, device)
        partitions[name].to_frame().to_csv(args.predictions / f"{name}.csv", index=False)
    metrics = evaluation_metrics(partitions)
    write_json(args.metrics, metrics)
    write_plots(partitions["test"], metrics["test"], args.plots)
    for name in PARTITIONS:
        m = metrics[name]
        log.info("%s (n=%d): macro AUC %.3f, accuracy %.3f, balanced accuracy %.3f", name, m["n"],
                 m["macro_auc"], m["accuracy"], m["balanced_accuracy"])


if __name__ == "__main__":
    run_main(main)
