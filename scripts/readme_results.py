#!/usr/bin/env python3
"""Write the README's results block from the committed metrics, so it cannot drift from them.

    python scripts/readme_results.py            # rewrite the block between the markers
    python scripts/readme_results.py --check    # exit 1 when the README's block is stale

Reads metrics/analysis.json, calibration.json, explain.json, anomaly.json and seed_spread.json.
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin (scripts/readme_results.py) -->", "<!-- results:end -->"


def load(name: str) -> dict:
    return json.loads((REPO / "metrics" / name).read_text())


def ci(d: dict) -> str:
    text = f"{d['value']:.3f} ({d['ci_low']:.3f}-{d['ci_high']:.3f})"
    return text + (f", {d['count']}/{d['n']}" if "count" in d else "")


def band(spread: dict, key: str) -> str:
    b = spread["metrics"][key]
    return f"{b['mean']:.3f} ({b['min']:.3f}-{b['max']:.3f})"


def classifier_rows(analysis: dict, calibration: dict, spread: dict) -> list[str]:
    test = analysis["test"]
    ece = analysis.get("calibration", {}).get("ece", {}).get("after")
    ece_text = ci(ece) if ece and ece.get("ci_low") is not None else \
        f"{calibration['test']['after']['ece']:.3f}"
    rows = [("macro one-vs-rest AUC", ci(test["macro_auc"]), band(spread, "test_macro_auc")),
            ("accuracy", ci(test["accuracy"]), band(spread, "test_accuracy")),
            ("balanced accuracy", ci(test["balanced_accuracy"]),
             band(spread, "test_balanced_accuracy")),
            ("Malignant sensitivity (argmax)", ci(test["sensitivity"]["Malignant"]),
             band(spread, "test_malignant_sensitivity")),
            (f"ECE after temperature scaling (T = {calibration['temperature']:.2f}, fitted on "
             "validation)", ece_text, band(spread, "test_ece_after_scaling")),
            ("validation macro AUC of the selected epoch", "", band(spread, "val_macro_auc"))]
    return [f"| {a} | {b} | {c} |" for a, b, c in rows]


def detector_rows(anomaly: dict) -> list[str]:
    rows = []
    for name, entry in anomaly.get("comparison", {}).items():
        auc, where = entry.get("auc") or {}, entry.get("localization") or {}
        if auc.get("value") is not None:
            pointing = (f"{where['pointing_game']:.3f} ({where['chance']:.3f})"
                        if where.get("pointing_game") is not None else "n/a")
            rows.append(f"| {name} | {ci(auc)} | {pointing} |")
    return rows


def block() -> str:
    analysis, calibration = load("analysis.json"), load("calibration.json")
    spread, anomaly = load("seed_spread.json"), load("anomaly.json")
    test, seeds = analysis["test"], [str(r["train_seed"]) for r in spread["runs"]]
    lines = [BEGIN, "",
             f"Test set of the committed run: {test['n_images']} images in {test['n_groups']} "
             f"patient groups; {analysis['ci_level']:.0%} intervals by {analysis['method']}, with "
             "count/n beside each proportion. The band is the mean "
             f"and range over {len(seeds)} training seeds ({', '.join(seeds)}; "
             "`scripts/seed_spread.sh`), data and split fixed. **Synthetic twin, not BTXRD.**", "",
             "| figure | committed run (95% CI) | band over the seeds: mean (min-max) |",
             "| --- | --- | --- |", *classifier_rows(analysis, calibration, spread), "",
             "Tumour vs normal, test AUC with its grouped interval (the classifier's tumour score "
             "beside detectors trained on normal radiographs only; [docs/anomaly.md](docs/anomaly.md)), "
             "and how often the model's map (the classifier's: Grad-CAM of the true class) peaks "
             "inside the lesion box of an annotated test tumour, with chance (box area over image "
             "area) beside it:",
             "", "| model | test AUC tumour vs normal (95% CI) | pointing game (chance) |",
             "| --- | --- | --- |",
             *detector_rows(anomaly), "", END]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    readme = (REPO / "README.md").read_text()
    if BEGIN not in readme or END not in readme:
        print(f"error: README.md lacks the markers {BEGIN} ... {END}", file=sys.stderr)
        return 2
    head, rest = readme.split(BEGIN, 1)
    updated = head + block() + rest.split(END, 1)[1]
    if args.check:
        if updated != readme:
            print("README.md's results block is stale: run scripts/readme_results.py",
                  file=sys.stderr)
            return 1
        return 0
    (REPO / "README.md").write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
