"""Analyze stage: test intervals (bootstrap for AUCs and the ECE before and after temperature
scaling, exact for proportions), the shipped operating points measured on test, and subgroup
metrics."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from assurexray.console import run_main
from assurexray.data.schema import DatasetInfo, read_index
from assurexray.evaluation.bootstrap import (
    METHOD,
    METHODS,
    GroupedResampling,
    bootstrap_metrics,
    read_groups,
    read_predictions,
)
from assurexray.evaluation.calibration import ece_before_after
from assurexray.evaluation.operating_points import evaluate_operating_points, read_fitted
from assurexray.evaluation.subgroups import (
    forest_plot,
    plot_records,
    subgroup_factors,
    subgroup_table,
    summarize_subgroups,
)
from assurexray.params import load_params

log = logging.getLogger("analyze")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "predictions", "groups", "index", "info", "calibration", "metrics",
                 "subgroups", "plots"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    args = parser.parse_args()

    params = load_params(args.params)
    a, seed = params.analysis, params.seed
    classes = DatasetInfo.load(args.info).classes
    groups = read_groups(args.groups)
    test = read_predictions(args.predictions / "test.csv", classes, groups)
    # The thresholds were fitted on calibrated validation probabilities: apply them to test's.
    temperature, fitted = read_fitted(args.calibration, classes)
    test_calibrated = read_predictions(args.predictions / "test.csv", classes, groups, temperature)
    factors = subgroup_factors(read_index(args.index), test.image_ids, a.age_bands)

    table = subgroup_table(test, factors, classes, a.age_bands, a.bootstrap_iterations,
                           a.ci_level, seed, a.min_subgroup_size)
    report = {
        "method": METHOD, "methods": METHODS, "iterations": a.bootstrap_iterations,
        "ci_level": a.ci_level, "seed": seed,
        "test": {"n_images": len(test), "n_groups": len(set(test.groups)),
                 "note": table["reason"].iloc[0] or None,
                 **bootstrap_metrics(test, classes, a.bootstrap_iterations, a.ci_level, seed)},
        "operating_points": evaluate_operating_points(fitted, test_calibrated, classes,
                                                      a.ci_level),
        "subgroups": summarize_subgroups(table, a.min_subgroup_size),
        # the same resamples as the main metrics: same groups, strata and seed
        "calibration": ece_before_after(
            test.probs, test_calibrated.probs, test.y_true, a.calibration_bins, temperature,
            GroupedResampling(test.groups, test.y_true, a.bootstrap_iterations, a.ci_level, seed)),
    }

    for path in (args.metrics, args.subgroups):
        path.parent.mkdir(parents=True, exist_ok=True)
    args.plots.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    table.to_csv(args.subgroups, index=False)
    (args.plots / "subgroup_auc.json").write_text(
        json.dumps(plot_records(table), indent=2, allow_nan=False) + "\n")
    forest_plot(table, args.plots / "subgroup_auc.png")
    log.info("test macro AUC %s; wrote %s, %s, %s", report["test"]["macro_auc"], args.metrics,
             args.subgroups, args.plots)


if __name__ == "__main__":
    run_main(main)
