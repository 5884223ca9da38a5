"""Report stage: regenerate the model card and the run report from the metrics files."""
import argparse
import logging
from pathlib import Path

from assurexray.console import run_main
from assurexray.params import load_params
from assurexray.reporting.inputs import load_inputs
from assurexray.reporting.model_card import render_model_card
from assurexray.reporting.report import render_report

log = logging.getLogger("report")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "info", "model", "metrics-dir", "train-metrics", "plots-dir",
                 "model-card", "report"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()

    inputs = load_inputs(load_params(args.params), args.info, args.model, args.metrics_dir,
                         args.train_metrics, args.plots_dir)
    documents = {args.model_card: render_model_card(inputs),
                 args.report: render_report(inputs, args.report.parent)}
    for path, text in documents.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    log.info("wrote %s; not available: %s", ", ".join(map(str, documents)),
             "; ".join(inputs.missing()) or "nothing")


if __name__ == "__main__":
    run_main(main)
