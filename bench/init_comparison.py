"""Choose the default recipe on validation only: train each candidate with several training
seeds on the pipeline's cache and splits, and record each run's best validation macro AUC, the
epoch it was reached, and the training time. Test images are never read.

    python bench/init_comparison.py --out bench/init_comparison.json --seeds 1 2 3 \\
        --candidate "scratch-b0: model.backbone=efficientnet_b0 model.init=scratch" \\
        --candidate "lite0: model.backbone=tf_efficientnet_lite0 model.init=package"

A candidate is "name: key=value ..." overriding params.yaml (dotted keys, YAML values).
"""
import argparse
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from assurexray.checked_dataclasses import from_dict
from assurexray.data.cache import ImageCache
from assurexray.data.datasets import read_split
from assurexray.data.schema import DatasetInfo
from assurexray.params import Params, load_params, to_dict
from assurexray.training.loop import SplitData, train_classifier


def with_overrides(params: Params, overrides: list[str]) -> Params:
    raw = to_dict(params)
    for item in overrides:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = yaml.safe_load(value)
    return from_dict(Params, raw)


def run(params: Params, seed: int, args) -> dict:
    params = dataclasses.replace(params, seed=seed)
    classes = DatasetInfo.load(args.info).classes
    train, val = (SplitData(*read_split(args.splits / f"{part}.csv", classes))
                  for part in ("train", "val"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        _, meta = train_classifier(params, ImageCache(args.cache), classes, train, val,
                                   Path(tmp) / "last", Path(tmp) / "live")
    return {"seed": seed, "best_val_macro_auc": meta.best_val_macro_auc,
            "best_epoch": meta.epoch + 1, "train_seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--cache", type=Path, default=Path("data/cache"))
    parser.add_argument("--splits", type=Path, default=Path("data/splits"))
    parser.add_argument("--info", type=Path, default=Path("data/dataset.json"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--candidate", action="append", required=True)
    args = parser.parse_args()

    base = load_params(args.params)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"candidates": {}}
    for spec in args.candidate:
        name, _, overrides = spec.partition(":")
        params = with_overrides(base, overrides.split())
        runs = results["candidates"].setdefault(name.strip(), {"overrides": overrides.split(),
                                                                "runs": []})
        done = {r["seed"] for r in runs["runs"]}
        for seed in args.seeds:
            if seed in done:
                continue
            runs["runs"].append(run(params, seed, args))
            aucs = [r["best_val_macro_auc"] for r in runs["runs"]]
            runs["val_macro_auc"] = {"mean": statistics.fmean(aucs), "min": min(aucs),
                                     "max": max(aucs), "n": len(aucs)}
            results["machine"] = {"cpu": platform.processor() or platform.machine(),
                                  "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
            args.out.write_text(json.dumps(results, indent=2) + "\n")  # after every run
            print(f"{name}: seed {seed}: {runs['runs'][-1]}", flush=True)


if __name__ == "__main__":
    main()
