"""Robustness stage: test metrics under acquisition degradations at several severities."""
import argparse
import logging
from pathlib import Path

from assurexray.console import run_main
from assurexray.data.datasets import read_split
from assurexray.inference.robustness import drop_rows, evaluate_robustness, plot_robustness
from assurexray.inference.runner import load_for_inference
from assurexray.jsonio import write_json
from assurexray.params import load_params

log = logging.getLogger("robustness")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "model", "cache", "splits", "metrics", "plots"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    model, meta, cache, transform, device = load_for_inference(args.model, args.cache)
    ids, labels = read_split(args.splits / "test.csv", meta.classes)
    report = evaluate_robustness(model, cache, ids, labels, meta.classes, transform,
                                 params.robustness.severities, params.evaluate.batch_size,
                                 device, params.seed)
    write_json(args.metrics, report)
    args.plots.mkdir(parents=True, exist_ok=True)
    write_json(args.plots / "robustness.json", drop_rows(report))
    plot_robustness(report, args.plots / "robustness.png")
    log.info("clean macro AUC %.3f; worst drop %.3f (%s)", report["clean"]["macro_auc"],
             report["worst_macro_auc_drop"], report["worst_corruption"])


if __name__ == "__main__":
    run_main(main)
