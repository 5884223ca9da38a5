"""Preprocess stage: decode every usable image once into a letterboxed uint8 cache."""
import argparse
from pathlib import Path

from assurexray.console import run_main
from assurexray.data.cache import build_cache
from assurexray.data.schema import read_index, read_quality
from assurexray.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "index", "quality", "out"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    build_cache(read_index(args.index), read_quality(args.quality), params.preprocess.cache_size,
                args.out, workers=params.preprocess.workers,
                max_pixels=params.audit.max_image_pixels)


if __name__ == "__main__":
    run_main(main)
