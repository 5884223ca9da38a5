"""Anomaly summary stage: the autoencoders and feature detectors beside the classifier in
metrics/anomaly.json, the ROC/PR plot data and the comparison section
(reports/anomaly_comparison.md)."""
import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from assurexray.anomaly.classifier_comparison import classifier_scores, comparison, comparison_context, curves
from assurexray.anomaly.data import normal_index
from assurexray.console import run_main
from assurexray.data.schema import DatasetInfo
from assurexray.errors import AssureXRayError
from assurexray.evaluation.applicability import applies, not_applicable
from assurexray.evaluation.predictions import read_predictions
from assurexray.jsonio import write_json
from assurexray.params import load_params
from assurexray.reporting.render import header, render

log = logging.getLogger("anomaly_summary")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "anomaly-dir", "predictions", "explain", "info", "metrics", "plots",
                 "comparison"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    evaluations, tables = {}, {}
    stage_of = {**dict.fromkeys(params.anomaly.archs, "anomaly_evaluate"),
                **dict.fromkeys(params.anomaly.detectors, "anomaly_detect")}
    for arch, stage in stage_of.items():
        folder = args.anomaly_dir / arch
        if not (folder / "evaluation.json").exists():
            raise AssureXRayError(f"{folder}: no evaluation.json; run {stage}@{arch}")
        evaluations[arch] = json.loads((folder / "evaluation.json").read_text())
        if not applies(evaluations[arch]):
            continue
        tables[arch] = pd.read_csv(folder / "test.csv", dtype={"image_id": str, "label": str,
                                                              "group": str, "center": str})
    if not evaluations:
        raise AssureXRayError("anomaly.archs is empty: nothing to summarize")
    info = DatasetInfo.load(args.info)
    doc_header = header("Anomaly detection beside the classifier",
                        "the anomaly_summary stage (`stages/anomaly_summary.py`)",
                        "`metrics/anomaly.json`", info.source)
    reasons = list(dict.fromkeys(ev["reason"] for ev in evaluations.values() if not applies(ev)))
    if reasons:
        write_not_applicable(args, "; ".join(reasons), doc_header)
        return
    normal = info.classes[normal_index(info.classes)]
    ids = next(iter(tables.values()))["image_id"].tolist()
    classifier = classifier_scores(read_predictions(args.predictions), ids, normal)
    localized = json.loads(args.explain.read_text())["localization"]
    # a source without lesion boxes has no Grad-CAM localization to set beside the maps'
    gradcam = localized["true_class"]["overall"] if applies(localized) else None
    comp = comparison(tables, evaluations, classifier, gradcam, normal, params.analysis,
                      params.seed)
    write_json(args.metrics, {"normal_class": normal, "n_test": len(ids),
                              "comparison": comp, "architectures": evaluations})
    roc, pr = curves(tables, evaluations, classifier, normal)
    args.plots.mkdir(parents=True, exist_ok=True)
    write_json(args.plots / "roc.json", roc)
    write_json(args.plots / "pr.json", pr)
    args.comparison.parent.mkdir(parents=True, exist_ok=True)
    args.comparison.write_text(render(
        "anomaly_comparison.md.j2", **comparison_context(comp, evaluations), header=doc_header))
    for model, m in comp.items():
        log.info("%s: tumour-vs-normal AUC %.3f (%.3f-%.3f)", model, m["auc"]["value"],
                 m["auc"]["ci_low"], m["auc"]["ci_high"])


def write_not_applicable(args, reason: str, doc_header: str) -> None:
    """Every output of the stage, saying why there is nothing to compare."""
    write_json(args.metrics, not_applicable(reason))
    for name in ("roc.json", "pr.json"):
        write_json(args.plots / name, [])
    args.comparison.parent.mkdir(parents=True, exist_ok=True)
    args.comparison.write_text(render("anomaly_comparison.md.j2", not_applicable=reason,
                                      header=doc_header))
    log.warning("anomaly detection not applicable: %s", reason)


if __name__ == "__main__":
    run_main(main)
