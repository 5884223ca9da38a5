"""Calibrate stage: temperature scaling fitted on validation logits, checked on test; then the
operating points, fitted on the calibrated validation probabilities (the scale `predict` and
the service report), shipped in the calibrated checkpoint's meta."""
import argparse
import logging
from dataclasses import replace
from pathlib import Path

from assurexray.console import run_main
from assurexray.evaluation.calibration import plot_reliability, reliability_rows, temperature_scaling_report
from assurexray.evaluation.operating_points import fit_operating_points
from assurexray.evaluation.predictions import read_predictions
from assurexray.jsonio import write_json
from assurexray.params import load_params
from assurexray.training.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger("calibrate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "model", "predictions", "out_model", "metrics", "plots"):
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, type=Path)
    args = parser.parse_args()

    analysis = load_params(args.params).analysis
    n_bins = analysis.calibration_bins
    model, meta = load_checkpoint(args.model, "cpu")
    val, test = (read_predictions(args.predictions / f"{p}.csv") for p in ("val", "test"))
    for preds, name in ((val, "val"), (test, "test")):
        if preds.classes != meta.classes:
            raise ValueError(f"{args.predictions / name}.csv: classes {preds.classes} differ from "
                             f"the model's {meta.classes}; rerun the evaluate stage")
    report = temperature_scaling_report(val.logits, val.y_true, test.logits, test.y_true, n_bins)
    report["operating_points"] = fit_operating_points(
        val.y_true, val.probs(report["temperature"]), val.classes, analysis.sensitivity_target,
        analysis.specificity_target, analysis.decision_point, scale="calibrated")
    write_json(args.metrics, report)
    rows = reliability_rows(test.logits, test.y_true, n_bins, report["temperature"])
    write_json(args.plots / "reliability.json", rows)
    plot_reliability(rows, f"Reliability (test), T = {report['temperature']:.2f}",
                     args.plots / "reliability.png")
    save_checkpoint(args.out_model, model, replace(meta, temperature=report["temperature"],
                                                   operating_points=report["operating_points"]))
    log.info("T = %.3f; test ECE %.3f -> %.3f, NLL %.3f -> %.3f", report["temperature"],
             report["test"]["before"]["ece"], report["test"]["after"]["ece"],
             report["test"]["before"]["nll"], report["test"]["after"]["nll"])


if __name__ == "__main__":
    run_main(main)
