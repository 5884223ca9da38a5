"""Throughput of `assurexray predict` on a folder of generated JPEGs, on both inference engines
(``onnxruntime`` and ``torch``), against each engine's raw forward pass.

All run at the same batch size on the CPU, alternated round by round so that the load of a
shared machine hits them alike (median of ``--rounds``): per engine the forward on ready
inputs as one stream and as the concurrent single-threaded streams predict uses, and predict
on files (decode, letterbox, preprocessing, forward, OOD score with --reference). Then the
whole `assurexray predict` process on one image, per engine (start-up: imports and loading).
Writes a JSON of the figures, with the machine's load average and the cost of turning one file
into cache pixels with and without the reduced JPEG decode.

    python bench/predict_throughput.py --out bench/predict_throughput.json \
        [--checkpoint models/calibrated.pt --reference models/reference.npz]

Without --checkpoint an untrained checkpoint of params.yaml's backbone and sizes is used (the
weights do not change the speed); without a graph beside the checkpoint one is exported.
"""
import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from assurexray.data.cache import letterbox, letterboxed_file
from assurexray.data.imageio import read_image
from assurexray.inference.classifier import Classifier
from assurexray.inference.engines import onnx_path
from assurexray.inference.export import export_onnx
from assurexray.inference.onnx_engine import OnnxEngine
from assurexray.inference.reference import file_sha256, load_reference
from assurexray.inference.torch_engine import TorchEngine
from assurexray.params import load_params, to_dict
from assurexray.predict import Predictor
from assurexray.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from assurexray.training.models import build_model

GOAL = 0.9  # predict / raw forward (issue 8.10)
ENGINES = ("onnxruntime", "torch")


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
    parser.add_argument("--starts", type=int, default=3,
                        help="whole `assurexray predict` processes on one image, per engine")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = args.checkpoint or untrained_checkpoint(load_params(args.params), tmp / "model.pt")
        model, meta = load_checkpoint(ckpt, "cpu")
        sha = file_sha256(ckpt)
        graph = onnx_path(ckpt) if onnx_path(ckpt).is_file() else export_onnx(
            model, meta, sha, tmp / "model.onnx")
        engines = {"torch": TorchEngine(model, meta), "onnxruntime": OnnxEngine.load(graph, sha)}
        files = write_jpegs(tmp / "images", args.n, args.side)
        reference = load_reference(args.reference, sha) if args.reference else None
        predictors = {name: Predictor(Classifier(engine, ckpt, sha, reference), ckpt,
                                      args.batch_size, args.workers)
                      for name, engine in engines.items()}
        rng = np.random.default_rng(0)
        batches = [rng.standard_normal((min(args.batch_size, args.n - k), 3, meta.image_size,
                                        meta.image_size), dtype=np.float32)
                   for k in range(0, args.n, args.batch_size)]
        fns = {}
        for name in ENGINES:   # alternated: every round runs each of them in turn
            engine, predictor = engines[name], predictors[name]
            fns[f"{name}_forward"] = lambda e=engine: [e.forward(b) for b in batches]
            fns[f"{name}_forward_streams"] = lambda e=engine: raw_forward_streams(e, batches)
            fns[f"{name}_predict"] = lambda p=predictor: sum(1 for _ in p.predict(files))
        seconds = interleaved(fns, args.rounds)
        starts = process_starts(ckpt, graph, files[0], args.starts, tmp)
        decode_ms = decode_costs(files, meta.cache_size)
    result = {"cpu_count": os.cpu_count(), "backbone": meta.backbone,
              "image_size": meta.image_size, "cache_size": meta.cache_size, "n_images": args.n,
              "jpeg_side": args.side, "batch_size": args.batch_size, "workers": args.workers,
              "ood_reference": args.reference is not None, "rounds": args.rounds,
              **{f"{name}_images_per_s": args.n / s for name, s in seconds.items()}}
    for name in ENGINES:
        best = max(result[f"{name}_forward_images_per_s"],
                   result[f"{name}_forward_streams_images_per_s"])
        result[f"{name}_predict_over_forward"] = result[f"{name}_predict_images_per_s"] / best
    result["onnxruntime_over_torch_predict"] = (result["onnxruntime_predict_images_per_s"]
                                                / result["torch_predict_images_per_s"])
    result["one_image_process_s"] = starts
    result["decode_letterbox_ms"] = decode_ms
    result["goal"] = GOAL
    result["load_average_1min"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def process_starts(ckpt: Path, graph: Path, image: Path, runs: int, tmp: Path) -> dict:
    """Median seconds of a whole `assurexray predict` process on one image, per engine
    (interpreter start, imports, loading, one forward), from a folder without params.yaml."""
    beside = tmp / "start"
    beside.mkdir(exist_ok=True)
    ckpt_copy = beside / "calibrated.pt"   # the graph must sit beside the checkpoint
    shutil.copy(ckpt, ckpt_copy)
    shutil.copy(graph, onnx_path(ckpt_copy))
    took: dict = {name: [] for name in ENGINES}
    for _ in range(runs):
        for name in ENGINES:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "assurexray.cli", "predict", str(image),
                            "--checkpoint", str(ckpt_copy), "--engine", name], check=True,
                           capture_output=True, cwd=beside)
            took[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in took.items()}


def untrained_checkpoint(params, path: Path) -> Path:
    model = build_model(params.model.backbone, 3)
    save_checkpoint(path, model, CheckpointMeta(
        backbone=params.model.backbone, classes=["Normal", "Benign", "Malignant"],
        image_size=params.train.image_size, cache_size=params.preprocess.cache_size,
        mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], dropout=params.model.dropout,
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


def raw_forward_streams(engine, batches: list[np.ndarray]) -> None:
    """The forward passes of ``batches`` in the engine's concurrent forward streams, as predict
    and the service run them."""
    with engine.streams() as streams, ThreadPoolExecutor(streams) as pool:
        list(pool.map(engine.forward, batches))


def interleaved(fns: dict, rounds: int) -> dict:
    """Median seconds of each fn over ``rounds`` rounds that run every fn in turn, after one
    warm-up round (caches, kernels, thread pools)."""
    seconds: dict = {name: [] for name in fns}
    for round_ in range(rounds + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            took = time.perf_counter() - start
            if round_:
                seconds[name].append(took)
    return {name: float(np.median(values)) for name, values in seconds.items()}


if __name__ == "__main__":
    main()
