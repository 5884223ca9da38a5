"""Train stage: fit the classifier on the train split, keep the best epoch by val macro AUC."""
import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from assurexray.console import run_main
from assurexray.data.cache import ImageCache
from assurexray.data.datasets import read_split
from assurexray.data.schema import DatasetInfo
from assurexray.params import load_params
from assurexray.training import distributed
from assurexray.training.checkpoint import save_checkpoint
from assurexray.training.loop import SplitData, train_classifier

log = logging.getLogger("train")


def main() -> int | None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "cache", "splits", "info", "model", "resume-dir", "live"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    if params.train.devices > 1 and not distributed.under_torchrun():
        # the same command, once per device; multi-node jobs start it under torchrun directly
        return distributed.relaunch(params.train.devices, __file__, sys.argv[1:])
    if params.train.seed is not None:  # vary training alone: data, split and evaluation keep theirs
        params = dataclasses.replace(params, seed=params.train.seed)
    classes = DatasetInfo.load(args.info).classes
    train, val = (SplitData(*read_split(args.splits / f"{part}.csv", classes))
                  for part in ("train", "val"))
    model, meta = train_classifier(params, ImageCache(args.cache), classes, train, val,
                                   args.resume_dir, args.live)
    if not distributed.is_main_process():
        return None
    save_checkpoint(args.model, model, meta)
    log.info("wrote %s (epoch %d, val macro AUC %.4f)", args.model, meta.epoch + 1,
             meta.best_val_macro_auc)


if __name__ == "__main__":
    run_main(main)
