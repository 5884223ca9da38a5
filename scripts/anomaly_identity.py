#!/usr/bin/env python3
"""The identity (shortcut) study: how much of a drawn lesion each autoencoder reconstructs, per
architecture and remedy, and over the latent size; with the validation normal-vs-abnormal AUC.

Trains every variant below on the normal training images of an existing pipeline run (the
decoded cache and splits), with the params.yaml settings otherwise, and writes a Markdown table
and its JSON. Validation data only: nothing here looks at the test split.

    python scripts/anomaly_identity.py --params params.yaml --cache data/cache \
        --splits data/splits --info data/dataset.json --out reports/anomaly_identity.md
"""
import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from assurexray import NOT_FOR_CLINICAL_USE  # noqa: E402
from assurexray.anomaly.data import input_tensors, normal_index, normal_subset  # noqa: E402
from assurexray.anomaly.identity import identity_check  # noqa: E402
from assurexray.anomaly.models import count_parameters  # noqa: E402
from assurexray.anomaly.scoring import score_inputs  # noqa: E402
from assurexray.anomaly.train import train_autoencoder  # noqa: E402
from assurexray.data.cache import ImageCache  # noqa: E402
from assurexray.data.datasets import read_split  # noqa: E402
from assurexray.data.schema import DatasetInfo  # noqa: E402
from assurexray.evaluation.metrics import ovr_auc  # noqa: E402
from assurexray.params import load_params  # noqa: E402
from assurexray.training.loop import SplitData  # noqa: E402

# (name, arch, changes to its params section)
VARIANTS = [
    ("U-Net, no remedy", "unet", {}),
    ("U-Net, no dense bottleneck (latent 0)", "unet", {"latent": 0}),
    ("U-Net, skip dropout 0.5", "unet", {"skip_dropout": 0.5}),
    ("U-Net, full-resolution skip removed", "unet", {"drop_skips": [0]}),
    ("U-Net, deepest skip removed", "unet", {"drop_skips": [2]}),
    ("U-Net, denoising (coarse noise 0.2)", "unet", {"noise_std": 0.2}),
    ("reversed, latent 16", "reversed", {"latent": 16}),
    ("reversed, latent 64", "reversed", {"latent": 64}),
    ("reversed, latent 256", "reversed", {"latent": 256}),
]


def run_variant(params, arch, changes, cache, classes, train, val, work: Path) -> dict:
    section = dataclasses.replace(getattr(params.anomaly, arch), **changes)
    p = dataclasses.replace(params, anomaly=dataclasses.replace(params.anomaly, **{arch: section}))
    started = time.process_time()
    model, meta = train_autoencoder(p, arch, cache, classes, train, val, work / "last",
                                    work / "live")
    normal = normal_index(classes)
    val_ids, _ = normal_subset(val.image_ids, val.labels, normal)
    pick = np.random.default_rng(p.seed).permutation(len(val_ids))[:p.anomaly.identity_lesions]
    clean = input_tensors(cache, [val_ids[i] for i in pick], p.anomaly.image_size)
    check = identity_check(model, clean, meta.score, p.anomaly.batch_size, p.seed)
    result = score_inputs(model, input_tensors(cache, val.image_ids, p.anomaly.image_size),
                          meta.score, p.anomaly.batch_size)
    auc = {s: float(ovr_auc(val.labels != normal, v)) for s, v in result.scores.items()}
    return {"arch": arch, "changes": changes, "parameters": count_parameters(model),
            "best_val_loss": meta.best_val_loss, "identity": check, "val_auc": auc,
            "cpu_seconds": round(time.process_time() - started, 1)}


def markdown(rows: dict, primary: str) -> str:
    lines = ["# Autoencoder identity study", "", f"> {NOT_FOR_CLINICAL_USE}", "",
             "Validation normals with one drawn lesion each. Lesion copy: share of the drawn "
             "lesion the reconstruction reproduces (1 = copied, the identity shortcut; 0 = "
             "removed). Error ratio: squared error inside the lesion over the rest of the "
             f"radiograph. Val AUC: normal vs tumour on the validation split ({primary} score).",
             "", "| variant | parameters | val MSE | lesion copy | error ratio | pointing game "
             "(chance) | lesion raises MSE | val AUC |", "|" + " --- |" * 8]
    for name, r in rows.items():
        i = r["identity"]
        lines.append(f"| {name} | {r['parameters']:,} | {r['best_val_loss']:.4f} | "
                     f"{i['lesion_copy']:.2f} | {i['error_ratio']:.2f} | "
                     f"{i['pointing_game']:.2f} ({i['chance']:.2f}) | "
                     f"{i['lesion_raises_score']['mse']:.2f} | {r['val_auc'][primary]:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("params", "cache", "splits", "info", "out"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params)
    classes = DatasetInfo.load(args.info).classes
    cache = ImageCache(args.cache)
    train, val = (SplitData(*read_split(args.splits / f"{part}.csv", classes))
                  for part in ("train", "val"))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, arch, changes) in enumerate(VARIANTS):
            rows[name] = run_variant(params, arch, changes, cache, classes, train, val,
                                     Path(tmp) / str(k))
            print(name, json.dumps(rows[name]["identity"]), flush=True)
    args.out.write_text(markdown(rows, params.anomaly.score.primary))
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
