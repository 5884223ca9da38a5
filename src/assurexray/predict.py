"""Classify radiographs with a trained checkpoint (research use only, not for clinical use).

Each image goes through exactly the evaluation pipeline, read from the checkpoint's meta:
``cache.letterboxed_file(cache_size)`` (the preprocess stage's reader) -> ``transforms.eval_transform``
(image_size, mean, std), then ``evaluation.predict_logits``. One JSON line per input on stdout
(and in OUT/predictions.jsonl): the predicted class, every class probability (and the
temperature-calibrated ones when the checkpoint has a temperature), with ``models/calibrated.pt``
the decision of each binary task (malignant vs rest, tumour vs normal) at its shipped operating
point (threshold on the calibrated scale, with its validation sensitivity and specificity), the
checkpoint identity and, with --gradcam, the path of a Grad-CAM overlay of the predicted class.
With --anomaly-checkpoint (an autoencoder from the anomaly_train stage) each record also gets
``anomaly``: its scores (the primary one as ``score``) and, with --out, the path of its
anomaly-map overlay.
An unreadable file gets ``{"file", "error"}`` and the others go on; the exit code is 1 when any
input failed.

Folders are walked recursively in sorted order, taking files with one of the reader's image
suffixes (``imageio.IMAGE_SUFFIXES``, any case: the same set ingest accepts); other files there
are listed in a warning. A file named explicitly is always tried, whatever its suffix.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.special import softmax
from torch.utils.data import TensorDataset

from assurexray import NOT_FOR_CLINICAL_USE
from assurexray.anomaly.checkpoint import load_autoencoder
from assurexray.anomaly.scoring import score_letterboxed
from assurexray.console import progress
from assurexray.data.cache import letterboxed_file
from assurexray.data.imageio import IMAGE_SUFFIXES, ImageReadError
from assurexray.data.transforms import eval_transform
from assurexray.evaluation.operating_points import decide
from assurexray.explain.cam import METHODS, compute_cams, overlay
from assurexray.inference.runner import predict_logits
from assurexray.training.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint
from assurexray.training.models import default_device

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_DIR",
                        help="image files (JPEG, PNG, DICOM) and/or folders")
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="models/model.pt or models/calibrated.pt")
    parser.add_argument("--gradcam", action="store_true",
                        help="write a Grad-CAM overlay of the predicted class per image (needs --out)")
    parser.add_argument("--cam-method", default="gradcam", choices=sorted(METHODS))
    parser.add_argument("--anomaly-checkpoint", type=Path,
                        help="an autoencoder (models/anomaly/<arch>.pt): add its anomaly score "
                             "and, with --out, its anomaly map")
    parser.add_argument("--out", type=Path, help="folder for predictions.jsonl and gradcam/")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="threads decoding images")


def run(args: argparse.Namespace) -> int:
    if args.gradcam and args.out is None:
        log.error("--gradcam writes overlay images: give an --out folder")
        return 2
    log.warning(NOT_FOR_CLINICAL_USE)
    files, empty_dirs = collect_files(args.inputs)
    try:
        model, meta = load_checkpoint(args.checkpoint, default_device())
    except (FileNotFoundError, CheckpointError) as exc:
        log.error("%s", exc)
        return 2
    predictor = Predictor(model, meta, args.checkpoint, args.batch_size, args.workers)
    if args.anomaly_checkpoint:
        try:
            predictor.anomaly = (*load_autoencoder(args.anomaly_checkpoint, default_device()),
                                 args.anomaly_checkpoint, args.out / "anomaly" if args.out else None)
        except (FileNotFoundError, CheckpointError) as exc:
            log.error("%s", exc)
            return 2
    records = itertools.chain(
        ({"file": str(path), "error": reason} for path, reason in empty_dirs),
        predictor.predict(files, args.out / "gradcam" if args.gradcam else None, args.cam_method))
    failed = 0
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(_jsonl(args.out)) if args.out else None
        for record in records:
            failed += "error" in record
            line = json.dumps(record)
            print(line, flush=True)
            if sink:
                sink.write(line + "\n")
    if failed:
        log.error("%d input(s) could not be classified (see their error records)", failed)
    return 1 if failed else 0


class Predictor:
    """A loaded checkpoint and its preprocessing, classifying files batch by batch."""

    def __init__(self, model: torch.nn.Module, meta: CheckpointMeta, checkpoint_path: Path,
                 batch_size: int, workers: int = 1):
        self.model, self.meta = model, meta
        self.classes = list(meta.classes)
        self.transform = eval_transform(meta.image_size, meta.mean, meta.std)
        self.batch_size, self.workers = batch_size, max(1, workers)
        self.device = next(model.parameters()).device
        self.identity = {"path": str(checkpoint_path), "backbone": meta.backbone,
                         "git_rev": meta.git_rev, "split": meta.split}
        self.anomaly = None  # (autoencoder, its meta, its path, map folder or None)

    def load(self, path: Path) -> tuple[torch.Tensor, np.ndarray] | str:
        """(model input, letterboxed image), or the reason the file cannot be read."""
        try:
            boxed, *_ = letterboxed_file(path, self.meta.cache_size)
        except ImageReadError as exc:
            return exc.reason
        return self.transform(image=boxed)["image"], boxed

    def predict(self, files: Sequence[Path], cam_dir: Path | None = None,
                cam_method: str = "gradcam") -> Iterator[dict]:
        """One record per file, in order (decoding in threads, inference in batches)."""
        if cam_dir is not None:
            cam_dir.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(self.workers) as pool, \
                progress(total=len(files), desc="predict", unit="img") as bar:
            for start in range(0, len(files), self.batch_size):
                chunk = files[start:start + self.batch_size]
                loaded = list(pool.map(self.load, chunk))
                yield from self._records(chunk, loaded, start, cam_dir, cam_method)
                bar.update(len(chunk))

    def _records(self, chunk, loaded, start, cam_dir, cam_method) -> list[dict]:
        records = [{"file": str(p), "error": item} if isinstance(item, str) else None
                   for p, item in zip(chunk, loaded)]
        ok = [i for i, record in enumerate(records) if record is None]
        if not ok:
            return records
        inputs = torch.stack([loaded[i][0] for i in ok])
        logits = predict_logits(self.model, TensorDataset(inputs), self.batch_size, self.device)
        preds = logits.argmax(axis=1)
        cams = compute_cams(self.model, inputs, preds, cam_method) if cam_dir else None
        for j, i in enumerate(ok):
            records[i] = self._record(chunk[i], logits[j])
            if cams is not None:
                png = cam_dir / f"{start + i:05d}_{chunk[i].stem}.png"
                Image.fromarray(overlay(loaded[i][1], cams[j])).save(png)
                records[i]["gradcam"] = str(png)
        if self.anomaly is not None:
            self._add_anomaly(records, [chunk[i] for i in ok], [loaded[i][1] for i in ok],
                              ok, start)
        return records

    def _add_anomaly(self, records, paths, boxed, ok, start) -> None:
        model, meta, path, map_dir = self.anomaly
        result = score_letterboxed(model, meta, boxed, self.batch_size, self.device)
        primary = meta["score"]["primary"]
        if map_dir is not None:
            map_dir.mkdir(parents=True, exist_ok=True)
        for j, i in enumerate(ok):
            scores = {name: float(v[j]) for name, v in result.scores.items()}
            entry = {"score": scores[primary], "primary": primary, "scores": scores,
                     "checkpoint": str(path), "arch": meta["arch"]}
            if map_dir is not None:
                amap = result.maps[j] / max(float(result.maps[j].max()), 1e-12)
                png = map_dir / f"{start + i:05d}_{paths[j].stem}.png"
                Image.fromarray(overlay(boxed[j], amap)).save(png)
                entry["map"] = str(png)
            records[i]["anomaly"] = entry

    def _record(self, path: Path, logits: np.ndarray) -> dict:
        probs = softmax(logits.astype(np.float64))
        record = {"file": str(path), "pred": self.classes[int(np.argmax(logits))],
                  "probs": dict(zip(self.classes, map(float, probs)))}
        if self.meta.temperature is not None:
            calibrated = softmax(logits.astype(np.float64) / self.meta.temperature)
            record["calibrated_probs"] = dict(zip(self.classes, map(float, calibrated)))
            # calibrate fits the thresholds on this (calibrated) scale and stores them beside T
            if self.meta.get("operating_points"):
                record["decisions"] = decide(self.meta["operating_points"], calibrated,
                                             self.classes)
        record["checkpoint"] = self.identity
        return record


def collect_files(inputs: Sequence[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(files to classify, (path, reason) for folders without any image)."""
    files, empty = [], []
    for path in inputs:
        if not path.is_dir():
            files.append(path)   # a missing or odd file fails in the reader, with its reason
            continue
        found = sorted(p for p in path.rglob("*") if p.is_file())
        images = [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
        skipped = [p for p in found if p.suffix.lower() not in IMAGE_SUFFIXES]
        if skipped:
            log.warning("%s: %d file(s) without an image suffix skipped, e.g. %s", path,
                        len(skipped), ", ".join(p.name for p in skipped[:3]))
        if not images:
            empty.append((path, f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this "
                                "folder"))
        files += images
    return files, empty


def _jsonl(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    return (out / "predictions.jsonl").open("w")
