"""Throughput of `assurexray predict` on a folder of generated JPEGs vs the raw model forward.

All run at the same batch size on the same device: the forward on ready tensors (the ceiling:
the inference core's own forward, traced as predict runs it), as one stream on torch's default
threads and as the concurrent single-threaded streams that predict uses
(``inference.streams``), and predict on files (decode, letterbox, transform,
forward, OOD score). Goal: predict at >= 0.9 of the faster forward. The plain eager
``model(batch)`` (the ceiling before the forward was traced) is timed too, for comparison.
All are timed in turn for ``--rounds`` rounds and the medians compared, so that the load of a
shared machine hits them alike. Writes a JSON of the figures, with the machine's load average
and the cost of turning one file into cache pixels with and without the reduced JPEG decode.

    python bench/predict_throughput.py --out bench/predict_throughput.json \
        [--checkpoint models/calibrated.pt --reference models/reference.npz]

Without --checkpoint an untrained checkpoint of params.yaml's backbone and sizes is used (the
weights do not change the speed). With --reference (as `predict` finds it beside the
checkpoint) every image also gets its out-of-distribution score, as in real use.
"""
import argparse
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

from assurexray.data.cache import letterbox, letterboxed_file
from assurexray.data.imageio import read_image
from assurexray.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from assurexray.inference.classifier import Classifier
from assurexray.inference.reference import file_sha256, load_reference
from assurexray.inference.streams import forward_streams
from assurexray.params import load_params, to_dict
from assurexray.predict import Predictor
from assurexray.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from assurexray.training.models import build_model, default_device

GOAL = 0.9  # predict / raw forward (issue 8.10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--reference", type=Path, help="the checkpoint's training reference")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--n", type=int, default=256, help="number of JPEGs")
    parser.add_argument("--side", type=int, default=1024, help="longer side of the JPEGs (px)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="predict's decoding threads")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each (median)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = default_device()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = args.checkpoint or untrained_checkpoint(load_params(args.params), tmp / "model.pt")
        model, meta = load_checkpoint(ckpt, device)
        files = write_jpegs(tmp / "images", args.n, args.side)
        sha = file_sha256(ckpt)
        reference = load_reference(args.reference, sha) if args.reference else None
        classifier = Classifier(model, meta, sha, reference)
        predictor = Predictor(classifier, ckpt, args.batch_size, args.workers)
        batches = list(torch.randn(args.n, 3, meta.image_size, meta.image_size,
                                   device=device).split(args.batch_size))
        seconds = interleaved({
            "forward_eager": lambda: [eager_forward(model, batch) for batch in batches],
            "forward": lambda: [classifier.forward(batch) for batch in batches],
            "forward_streams": lambda: raw_forward_streams(classifier, batches),
            "predict": lambda: sum(1 for _ in predictor.predict(files))}, args.rounds, device)
        decode_ms = decode_costs(files, meta.cache_size)
    result = {"device": str(device), "torch_threads": torch.get_num_threads(),
              "backbone": meta.backbone, "image_size": meta.image_size,
              "cache_size": meta.cache_size, "n_images": args.n, "jpeg_side": args.side,
              "batch_size": args.batch_size, "workers": args.workers,
              "ood_reference": args.reference is not None,
              "rounds": args.rounds,
              **{f"{name}_images_per_s": args.n / s for name, s in seconds.items()}}
    best = max(result["forward_images_per_s"], result["forward_streams_images_per_s"])
    result["predict_over_forward"] = result["predict_images_per_s"] / best
    result["predict_over_eager_forward"] = (result["predict_images_per_s"]
                                            / result["forward_eager_images_per_s"])
    result["decode_letterbox_ms"] = decode_ms
    result["goal"] = GOAL
    result["meets_goal"] = result["predict_over_forward"] >= GOAL
    result["load_average_1min"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def untrained_checkpoint(params, path: Path) -> Path:
    model = build_model(params.model.backbone, 3, pretrained=False)
    save_checkpoint(path, model, CheckpointMeta(
        backbone=params.model.backbone, classes=["Normal", "Benign", "Malignant"],
        image_size=params.train.image_size, cache_size=params.preprocess.cache_size,
        mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), dropout=params.model.dropout,
        params=to_dict(params), split=params.split, epoch=0, best_val_macro_auc=0.0))
    return path


def write_jpegs(folder: Path, n: int, side: int) -> list[Path]:
    """``n`` radiograph-like portrait JPEGs (bright bone band on noise), quality 90."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        h, w = side, int(side * rng.uniform(0.6, 0.9))
        img = rng.normal(40, 12, (h, w)).clip(0, 255).astype(np.uint8)
        x = int(rng.integers(w // 4, w // 2))
        img[:, x:x + w // 4] = np.clip(img[:, x:x + w // 4].astype(int) + 150, 0, 255)
        files.append(folder / f"{i:05d}.jpg")
        cv2.imwrite(str(files[-1]), cv2.GaussianBlur(img, (7, 7), 0),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
    return files


def decode_costs(files: list[Path], size: int) -> dict:
    """Median ms per file to cache pixels: full decode + letterbox (the reader before the
    reduced JPEG decode) vs ``letterboxed_file``. Interleaved, so that load hits both alike."""
    full, reduced = [], []
    for path in files * 2:
        start = time.perf_counter()
        letterbox(read_image(path), size)
        full.append(time.perf_counter() - start)
        start = time.perf_counter()
        letterboxed_file(path, size)
        reduced.append(time.perf_counter() - start)
    return {"full_decode": 1e3 * float(np.median(full)),
            "reduced_decode": 1e3 * float(np.median(reduced))}


def eager_forward(model: torch.nn.Module, batch: torch.Tensor) -> None:
    """The plain ``model(batch)`` in eager mode (this benchmark's ceiling before the forward was
    traced): shown for comparison, not the goal's ceiling."""
    with torch.inference_mode():
        model(batch).cpu()


def raw_forward_streams(classifier: Classifier, batches: list[torch.Tensor]) -> None:
    """The forward passes of ``batches`` in predict's concurrent forward streams."""
    with forward_streams(classifier.device) as streams, ThreadPoolExecutor(streams) as pool:
        list(pool.map(classifier.forward, batches))


def timed(fn, device) -> float:
    """Seconds of one run of fn (device work included)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved(fns: dict, rounds: int, device) -> dict:
    """Median seconds of each fn over ``rounds`` rounds that run every fn in turn, after one
    warm-up round (caches, kernels, thread pools)."""
    seconds: dict = {name: [] for name in fns}
    for round_ in range(rounds + 1):
        for name, fn in fns.items():
            took = timed(fn, device)
            if round_:
                seconds[name].append(took)
    return {name: float(np.median(values)) for name, values in seconds.items()}


if __name__ == "__main__":
    main()
