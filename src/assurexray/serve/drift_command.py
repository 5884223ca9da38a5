"""Drift report for a batch of files against the training reference (research use only).

Takes a folder (walked recursively, image suffixes only) or a CSV with a ``path`` or ``file``
column, classifies every image with the served pipeline, and writes the same report as the
service's GET /drift_report: OUT.json and OUT.html.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from assurexray.data.imageio import IMAGE_SUFFIXES
from assurexray.errors import AssureXRayError
from assurexray.inference.classifier import Classifier
from assurexray.inference.drift import drift_report
from assurexray.inference.monitoring import summarize
from assurexray.params import load_params
from assurexray.serve.drift_html import render_drift_html

log = logging.getLogger(__name__)


class DriftInputError(AssureXRayError, ValueError):
    """The folder or CSV names no image."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, metavar="FOLDER_OR_CSV")
    parser.add_argument("--checkpoint", type=Path, default=Path("models/calibrated.pt"))
    parser.add_argument("--reference", type=Path, default=Path("models/reference.npz"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("drift_report"),
                        help="writes OUT.json and OUT.html")
    parser.add_argument("--batch-size", type=int, default=32)


def list_files(source: Path) -> list[Path]:
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    elif source.suffix.lower() == ".csv":
        table = pd.read_csv(source, dtype=str, keep_default_na=False)
        column = next((c for c in ("path", "file") if c in table.columns), None)
        if column is None:
            raise DriftInputError(f"{source}: needs a 'path' or 'file' column")
        files = [Path(p) for p in table[column] if p]
    else:
        raise DriftInputError(f"{source}: expected a folder or a .csv file")
    if not files:
        raise DriftInputError(f"{source}: no image files")
    return files


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    limits = params.serve
    files = list_files(args.source)
    classifier = Classifier.from_files(args.checkpoint, args.reference, params.inference.engine)
    if classifier.reference is None:
        raise DriftInputError(f"{args.reference}: a training reference is needed for a drift report")
    summary = summarize(classifier, files, classifier.decode_file, args.batch_size, desc="drift")
    for reason in summary.rejected:
        log.warning("skipped %s", reason)
    report = drift_report(classifier.reference, summary.stats, summary.embeddings,
                          limits.drift_alpha, limits.drift_permutations)
    report["skipped"] = len(summary.rejected)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".html").write_text(render_drift_html(report))
    log.info("%d images: %s; wrote %s.json and .html", report["n"],
             "DRIFT" if report["drift"] else "no drift", args.out)
    return 0
