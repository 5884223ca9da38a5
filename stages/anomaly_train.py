"""Anomaly train stage: fit one autoencoder architecture on the normal training images."""
import argparse
import logging
from pathlib import Path

from assurexray.anomaly.checkpoint import save_autoencoder, save_not_trained
from assurexray.anomaly.data import not_applicable_reason
from assurexray.anomaly.models import ARCHS
from assurexray.anomaly.train import train_autoencoder
from assurexray.console import run_main
from assurexray.data.cache import ImageCache
from assurexray.data.datasets import read_split
from assurexray.data.schema import DatasetInfo
from assurexray.evaluation.applicability import not_applicable
from assurexray.jsonio import write_json
from assurexray.params import load_params
from assurexray.training.loop import SplitData

log = logging.getLogger("anomaly_train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", required=True, choices=ARCHS)
    for name in ("params", "cache", "splits", "info", "model", "resume-dir", "live"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    classes = DatasetInfo.load(args.info).classes
    reason = not_applicable_reason(classes)
    if reason:   # the stage's outputs say why, and the later anomaly stages pass it on
        save_not_trained(args.model, reason)
        write_json(args.live / "metrics.json", not_applicable(reason))
        (args.live / "plots").mkdir(parents=True, exist_ok=True)
        log.warning("%s: not trained: %s", args.arch, reason)
        return
    train, val = (SplitData(*read_split(args.splits / f"{part}.csv", classes))
                  for part in ("train", "val"))
    model, meta = train_autoencoder(params, args.arch, ImageCache(args.cache), classes, train, val,
                                    args.resume_dir, args.live)
    save_autoencoder(args.model, model, meta)
    log.info("wrote %s (epoch %d, val reconstruction MSE %.5f)", args.model, meta.epoch + 1,
             meta.best_val_loss)


if __name__ == "__main__":
    run_main(main)
