"""Wall-clock timings that used to be test assertions (they failed under load, not on bugs).

Generating a small twin (40 images, 320-720 px) and 1,000 grouped bootstrap resamples of 500
test images, each the median of ``--repeats`` runs. The budgets these once asserted were 15 s
and 5 s on this machine's 2 cores; compare against them by eye, on an idle machine.

    python bench/component_timings.py --out bench/component_timings.json
"""
import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from assurexray.data.synthetic.writer import generate_twin
from assurexray.evaluation.bootstrap import Predictions, bootstrap_metrics


def predictions(n_groups: int = 250, views: int = 2) -> Predictions:
    """Noisy but informative 3-class probabilities, ``views`` images per patient group."""
    rng = np.random.default_rng(0)
    y = np.repeat(rng.choice(3, size=n_groups, p=[0.5, 0.35, 0.15]), views)
    logits = 2.0 * np.eye(3)[y] + rng.normal(size=(len(y), 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Predictions(np.array([f"img{i}" for i in range(len(y))]), y, probs.argmax(axis=1),
                       probs, np.repeat([f"g{i}" for i in range(n_groups)], views))


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="JSON result")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    preds = predictions()
    with tempfile.TemporaryDirectory() as tmp:
        twin_s = median_seconds(lambda: generate_twin(
            Path(tempfile.mkdtemp(dir=tmp)), n_images=40, seed=0, min_side=320, max_side=720),
            args.repeats)
    boot_s = median_seconds(lambda: bootstrap_metrics(preds, ["a", "b", "c"], n_iter=1000,
                                                      ci_level=0.95, seed=0), args.repeats)
    result = {"twin_40_images_s": twin_s, "bootstrap_1000_on_500_images_s": boot_s,
              "repeats": args.repeats,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "load_average": os.getloadavg()}}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
