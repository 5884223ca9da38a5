"""Train stage: fit the classifier on the train split, keep the best epoch by val macro AUC."""
import argparse
import logging
from pathlib import Path

from assurexray.cache import ImageCache
from assurexray.checkpoint import save_checkpoint
from assurexray.datasets import read_split
from assurexray.params import load_params
from assurexray.schema import DatasetInfo
from assurexray.training import SplitData, train_classifier

log = logging.getLogger("train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "cache", "splits", "info", "model", "resume-dir", "live"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    params = load_params(args.params)
    classes = DatasetInfo.load(args.info).classes
    train, val = (SplitData(*read_split(args.splits / f"{part}.csv", classes))
                  for part in ("train", "val"))
    model, meta = train_classifier(params, ImageCache(args.cache), classes, train, val,
                                   args.resume_dir, args.live)
    save_checkpoint(args.model, model, meta)
    log.info("wrote %s (epoch %d, val macro AUC %.4f)", args.model, meta["epoch"] + 1,
             meta["best_val_macro_auc"])


if __name__ == "__main__":
    main()
