"""Audit stage: decode every indexed image, check labels, annotations and duplicates, report."""
import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from assurexray.console import run_main
from assurexray.data.audit import run_audit
from assurexray.data.audit_report import report_context, write_plots
from assurexray.data.schema import DatasetInfo, read_index
from assurexray.params import load_params
from assurexray.reporting.render import header, render

log = logging.getLogger("audit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "index", "notes", "info", "quality", "report", "metrics", "plots"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()

    notes = pd.read_csv(args.notes, dtype=str, keep_default_na=False)
    result = run_audit(read_index(args.index), notes, DatasetInfo.load(args.info),
                       load_params(args.params).audit)
    for path in (args.quality, args.report, args.metrics):
        path.parent.mkdir(parents=True, exist_ok=True)
    result.quality.to_csv(args.quality, index=False)
    args.metrics.write_text(json.dumps(result.metrics, indent=2) + "\n")
    figures = write_plots(result, args.plots)
    args.report.write_text(render(
        "data_audit.md.j2", **report_context(result, figures, args.report),
        header=header("Data audit", "the audit stage (`stages/audit.py`, `dvc repro audit`)",
                      "the prepared index", result.info.source)))
    m = result.metrics
    log.info("%d images in = %d usable + %d excluded; %d exact and %d near duplicate pairs",
             m["images_in"], m["usable"], m["excluded"], m["exact_duplicate_pairs"],
             m["near_duplicate_pairs"])


if __name__ == "__main__":
    run_main(main)
