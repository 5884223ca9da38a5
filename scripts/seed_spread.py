#!/usr/bin/env python3
"""Mean and range of the headline figures over training seeds, from `dvc exp show --json`.

Reads the committed run (the baseline commit) and the named experiments, and writes
{"runs": [{name, train_seed, metrics}], "metrics": {name: {mean, min, max, values}}, ...}.
scripts/seed_spread.sh runs the experiments and calls this.

    python scripts/seed_spread.py exps.json --names seed-1 seed-2 --out metrics/seed_spread.json
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

# figure -> (metrics file, keys into it)
HEADLINE = {
    "test_macro_auc": ("metrics/analysis.json", ("test", "macro_auc", "value")),
    "test_accuracy": ("metrics/analysis.json", ("test", "accuracy", "value")),
    "test_balanced_accuracy": ("metrics/analysis.json", ("test", "balanced_accuracy", "value")),
    "test_malignant_sensitivity": ("metrics/analysis.json",
                                   ("test", "sensitivity", "Malignant", "value")),
    "test_ece_after_scaling": ("metrics/calibration.json", ("test", "after", "ece")),
    "val_macro_auc": ("dvclive/train/metrics.json", ("best_val_macro_auc",)),
}


def states(exps: list[dict]):
    """Every experiment state in the JSON, nested ones included, with its baseline flag."""
    for top in exps:
        yield top, top.get("rev") != "workspace"
        for group in top.get("experiments") or []:
            for state in group.get("revs", []):
                yield {**state, "executor": group.get("executor")}, False


def figures(state: dict) -> dict:
    """The headline figures of one state; a missing file or key is an error naming it."""
    data = state.get("data") or {}
    executor = (state.get("executor") or {}).get("state")
    if executor not in (None, "success"):  # queued or running: its metrics are the baseline's
        raise SystemExit(f"error: run {state.get('name') or state['rev'][:7]} is {executor}, "
                         "not finished (dvc queue status)")
    out = {}
    for name, (path, keys) in HEADLINE.items():
        value = (data.get("metrics", {}).get(path) or {}).get("data")
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, (int, float)):
            raise SystemExit(f"error: run {state.get('name') or state['rev'][:7]}: {path} lacks "
                             f"{'.'.join(keys)}; did the experiment fail? (dvc queue logs)")
        out[name] = value
    return out


def training_seed(state: dict) -> int | None:
    params = ((state.get("data") or {}).get("params", {}).get("params.yaml") or {}).get("data", {})
    train_seed = params.get("train", {}).get("seed")
    return params.get("seed") if train_seed is None else train_seed


def spread(exps: list[dict], names: list[str]) -> dict:
    runs = {}
    for state, baseline in states(exps):
        name = "committed" if baseline else state.get("name")
        if (baseline and "committed" not in runs) or name in names:
            runs[name] = {"name": name, "rev": state["rev"], "train_seed": training_seed(state),
                          "metrics": figures(state)}
    missing = [n for n in ["committed", *names] if n not in runs]
    if missing:
        raise SystemExit(f"error: no experiment named {missing} in the dvc exp show output")
    seeds = [r["train_seed"] for r in runs.values()]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"error: the runs repeat a training seed ({seeds}): nothing to spread")
    summary = {}
    for figure in HEADLINE:
        values = [r["metrics"][figure] for r in runs.values()]
        summary[figure] = {"mean": statistics.fmean(values), "min": min(values),
                           "max": max(values), "values": values}
    return {"varies": "train.seed (initialisation, batch order, augmentation); data, split and "
                      "evaluation fixed", "runs": list(runs.values()), "metrics": summary}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exps", type=Path, help="output of `dvc exp show --json`")
    parser.add_argument("--names", nargs="+", required=True, help="experiment names to include")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = spread(json.loads(args.exps.read_text()), args.names)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for figure, s in result["metrics"].items():
        print(f"{figure:28s} mean {s['mean']:.3f}  range {s['min']:.3f}-{s['max']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
