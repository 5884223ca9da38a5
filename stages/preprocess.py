"""Preprocess stage: decode every usable image once into a letterboxed uint8 cache."""
import argparse
import logging
from pathlib import Path

from assurexray.cache import build_cache
from assurexray.params import load_params
from assurexray.schema import read_index, read_quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "index", "quality", "out"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    params = load_params(args.params)
    build_cache(read_index(args.index), read_quality(args.quality), params.preprocess.cache_size,
                args.out, workers=params.preprocess.workers,
                max_pixels=params.audit.max_image_pixels)


if __name__ == "__main__":
    main()
