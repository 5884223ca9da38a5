"""Compare the stratified and center-holdout results from DVC's own experiment records.

Reads `dvc exp show --json` (the workspace, the committed baselines and every experiment),
takes the newest record of each split and writes a markdown and a JSON table of the key
metrics with their bootstrap intervals and the generalization gap (center - stratified).
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
from pathlib import Path

from assurexray.reporting.render import ci, header, render, signed

log = logging.getLogger(__name__)

SPLITS = ("stratified", "center")

# (label, metrics file, dotted key). The key points at a number or at {value, ci_low, ci_high}.
METRICS = [
    ("Macro AUC", "metrics/analysis.json", "test.macro_auc"),
    ("Accuracy", "metrics/analysis.json", "test.accuracy"),
    ("Balanced accuracy", "metrics/analysis.json", "test.balanced_accuracy"),
    ("Malignant sensitivity", "metrics/analysis.json", "test.sensitivity.Malignant"),
    ("Malignant specificity", "metrics/analysis.json", "test.specificity.Malignant"),
    ("ECE (after temperature scaling)", "metrics/calibration.json", "test.after.ece"),
    ("Pointing game (correct tumour images)", "metrics/explain.json",
     "localization.true_class.correct.pointing_game"),
    ("Pointing game chance rate", "metrics/explain.json", "localization.true_class.correct.chance"),
]


def experiment_records(exp_show: list[dict]) -> list[dict]:
    """Flatten `dvc exp show --json` into records {name, rev, timestamp, params, metrics}."""
    records = []

    def add(entry: dict, name: str | None) -> None:
        data = entry.get("data") or {}
        if entry.get("error") or not data:
            return
        params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
        metrics = {path: (m or {}).get("data", {}) for path, m in (data.get("metrics") or {}).items()}
        records.append({"name": name or entry.get("name") or entry["rev"], "rev": entry["rev"],
                        "timestamp": data.get("timestamp") or "", "params": params,
                        "metrics": metrics})

    for baseline in exp_show:
        add(baseline, baseline.get("name"))
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs", []):
                add(rev, exp.get("name") or rev.get("name"))
    return records


def newest_by_split(records: list[dict]) -> dict[str, dict]:
    """The newest record per split value; the uncommitted workspace counts as oldest."""
    chosen: dict[str, dict] = {}
    for record in sorted(records, key=lambda r: r["timestamp"]):
        split = record["params"].get("split")
        if split in SPLITS:
            chosen[split] = record
    return chosen


def lookup(metrics: dict, path: str, key: str):
    node = metrics.get(path, {})
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def as_interval(value) -> dict | None:
    if isinstance(value, dict) and "value" in value:
        return {k: value.get(k) for k in ("value", "ci_low", "ci_high")}
    if isinstance(value, (int, float)):
        return {"value": float(value), "ci_low": None, "ci_high": None}
    return None


def comparison(by_split: dict[str, dict]) -> list[dict]:
    rows = []
    for label, path, key in METRICS:
        cells = {s: as_interval(lookup(by_split[s]["metrics"], path, key)) if s in by_split else None
                 for s in SPLITS}
        first, second = (c["value"] if c else None for c in cells.values())
        gap = second - first if first is not None and second is not None else None
        rows.append({"metric": label, "file": path, "key": key, **cells, "gap": gap})
    return rows


def data_source(by_split: dict[str, dict]) -> str | None:
    """'synthetic' when any compared run used the twin, else the one source named (None when
    the records name none)."""
    sources = {(r["params"].get("data") or {}).get("source") for r in by_split.values()}
    if "synthetic" in sources:
        return "synthetic"
    named = sorted(s for s in sources if s)
    return named[0] if named and None not in sources else None


def to_markdown(rows: list[dict], by_split: dict[str, dict]) -> str:
    experiments = [[split, by_split.get(split)] for split in SPLITS]
    table = [[row["metric"], ci(row["stratified"]), ci(row["center"]), signed(row["gap"])]
             for row in rows]
    return render("split_comparison.md.j2", experiments=experiments, rows=table,
                  header=header("Stratified vs center-holdout split", "`assurexray compare`",
                                "`dvc exp show --json`", data_source(by_split),
                                "no compared experiment records `data.source` in its params"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exp-json", type=Path,
                        help="saved output of `dvc exp show --json` (default: run it now)")
    parser.add_argument("--out", type=Path, default=Path("reports/split_comparison"),
                        help="output stem: writes STEM.md and STEM.json")


def run(args: argparse.Namespace) -> int:
    if args.exp_json:
        exp_show = json.loads(args.exp_json.read_text())
    else:
        try:
            out = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True,
                                 text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            log.error("`dvc exp show --json` failed (%s); run inside the repository with the "
                      "virtual environment active", getattr(exc, "stderr", exc))
            return 2
        exp_show = json.loads(out)
    by_split = newest_by_split(experiment_records(exp_show))
    missing = [s for s in SPLITS if s not in by_split]
    if missing:
        log.warning("no experiment found for split(s) %s: run `dvc exp run -S split=%s`",
                    missing, missing[0])
    rows = comparison(by_split)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(to_markdown(rows, by_split))
    sources = {s: {k: r[k] for k in ("name", "rev", "timestamp")} for s, r in by_split.items()}
    args.out.with_suffix(".json").write_text(
        json.dumps({"experiments": sources, "rows": rows}, indent=2) + "\n")
    print(to_markdown(rows, by_split))
    return 0 if not missing else 1
