"""Classify radiographs with a trained checkpoint (research use only, not for clinical use).

Each image goes through the inference core (``inference.classifier``), i.e. exactly the
evaluation pipeline read from the checkpoint's meta: ``imageio.read_image_reduced`` (the cache's
reader) -> ``cache.letterbox(cache_size)`` -> ``transforms.eval_transform`` (image_size, mean, std) -> the
model. Degenerate inputs (a side under ``ood.min_side`` px, an extreme aspect ratio, a blank
image) are rejected before the model; with the training reference (``models/reference.npz``)
every result carries an out-of-distribution verdict. One JSON line per input on stdout
(and in OUT/predictions.jsonl): the predicted class, every class probability (and the
temperature-calibrated ones when the checkpoint has a temperature), with ``models/calibrated.pt``
the decision of each binary task (malignant vs rest, tumour vs normal) at its shipped operating
point (threshold on the calibrated scale, with its validation sensitivity and specificity), the
checkpoint identity and, with --gradcam, the path of a Grad-CAM overlay of the predicted class.
With --anomaly-checkpoint (an autoencoder from anomaly_train, or a feature detector from
anomaly_fit) each record also gets ``anomaly``: its scores (the primary one as ``score``), a
feature detector's ``decision`` at its validation threshold and, with --out, the path of its
anomaly-map overlay.
An unreadable file gets ``{"file", "error"}`` and the others go on; the exit code is 1 when any
input failed.

Folders are walked recursively in sorted order, taking files with an image suffix
(.jpg .jpeg .png .dcm .dicom, any case); other files there are listed in a warning. A file
named explicitly is always tried, whatever its suffix.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, get_args, get_type_hints

import numpy as np
from PIL import Image

from assurexray import NOT_FOR_CLINICAL_USE
from assurexray.console import progress
from assurexray.data.imageio import IMAGE_SUFFIXES, ImageReadError
from assurexray.errors import AssureXRayError
from assurexray.inference.classifier import DEFAULT_TEST_RATES as TEST_RATES
from assurexray.inference.classifier import Classifier, Prepared
from assurexray.inference.engines import ENGINES
from assurexray.inference.ood import RejectedInput
from assurexray.params import ExplainParams, load_params

if TYPE_CHECKING:
    import torch

    from assurexray.anomaly.detector import FeatureDetector

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

REFERENCE_NAME = "reference.npz"
# explain.cam.METHODS' names (tests/test_params.py): importing it would import torch.
CAM_METHODS = get_args(get_type_hints(ExplainParams)["method"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_DIR",
                        help="image files (JPEG, PNG, DICOM) and/or folders")
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="models/model.pt or models/calibrated.pt")
    parser.add_argument("--gradcam", action="store_true",
                        help="write a Grad-CAM overlay of the predicted class per image (needs --out)")
    parser.add_argument("--cam-method", default="gradcam", choices=sorted(CAM_METHODS))
    parser.add_argument("--anomaly-checkpoint", type=Path,
                        help="an anomaly model (models/anomaly/<arch or detector>.pt): add its "
                             "anomaly score (a detector's decision too) and, with --out, its map")
    parser.add_argument("--out", type=Path, help="folder for predictions.jsonl and gradcam/")
    parser.add_argument("--reference", type=Path,
                        help=f"training reference of the reference stage (default: {REFERENCE_NAME} "
                             "beside the checkpoint, when present): flags out-of-distribution inputs")
    parser.add_argument("--test-rates", type=Path,
                        help=f"the analyze stage's metrics of this checkpoint's run (default: "
                             f"{TEST_RATES} when present): each decision quotes its test "
                             "sensitivity and specificity with intervals beside the validation ones")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="threads decoding images")
    parser.add_argument("--engine", choices=sorted(ENGINES),
                        help="inference engine (default: inference.engine of --params; "
                             "onnxruntime falls back to torch, saying why)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="params.yaml for inference.engine, when the file exists")


def run(args: argparse.Namespace) -> int:
    if args.gradcam and args.out is None:
        log.error("--gradcam writes overlay images: give an --out folder")
        return 2
    log.warning(NOT_FOR_CLINICAL_USE)
    files, empty_dirs = collect_files(args.inputs)
    reference = args.reference or _beside(args.checkpoint, REFERENCE_NAME)
    if reference is None:
        log.warning("no training reference (%s beside the checkpoint, or --reference): "
                    "out-of-distribution inputs will not be flagged", REFERENCE_NAME)
    try:
        classifier = Classifier.from_files(args.checkpoint, reference, engine_choice(args))
        quote_test_rates(classifier, args.test_rates)
    except (FileNotFoundError, AssureXRayError) as exc:
        log.error("%s", exc)
        return 2
    predictor = Predictor(classifier, args.checkpoint, args.batch_size, args.workers)
    if args.anomaly_checkpoint:
        from assurexray.anomaly.detector import load_anomaly_model  # imports torch
        try:
            predictor.anomaly = (*load_anomaly_model(args.anomaly_checkpoint, classifier.device),
                                 args.anomaly_checkpoint, args.out / "anomaly" if args.out else None)
        except (FileNotFoundError, AssureXRayError) as exc:
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


def engine_choice(args: argparse.Namespace) -> str:
    """--engine, else inference.engine of --params when that file exists, else onnxruntime."""
    if args.engine:
        return args.engine
    return load_params(args.params).inference.engine if args.params.is_file() else "onnxruntime"


class Predictor:
    """A ``Classifier`` applied to files batch by batch (decoding in threads)."""

    def __init__(self, classifier: Classifier, checkpoint_path: Path, batch_size: int,
                 workers: int = 1):
        self.classifier = classifier
        self.batch_size, self.workers = batch_size, max(1, workers)
        meta = classifier.meta
        self.identity = {"path": str(checkpoint_path), "backbone": meta.backbone,
                         "git_rev": meta.git_rev, "split": meta.split,
                         "engine": classifier.engine.name}
        # (autoencoder or feature detector, its meta, its path, map folder or None)
        self.anomaly: tuple[torch.nn.Module | FeatureDetector, dict, Path, Path | None] | None = None

    def load(self, path: Path) -> Prepared | str:
        """The prepared input, or the reason the file cannot be classified."""
        try:
            return self.classifier.decode_file(path)
        except ImageReadError as exc:
            return exc.reason
        except RejectedInput as exc:
            return f"rejected before the model: {exc}"

    def predict(self, files: Sequence[Path], cam_dir: Path | None = None,
                cam_method: str = "gradcam") -> Iterator[dict]:
        """One record per file, in order: files decode in ``workers`` threads while batches go
        through the model in concurrent forward streams (``inference.streams``). Grad-CAM
        hooks the shared model, so overlays take one stream."""
        if cam_dir is not None:
            cam_dir.mkdir(parents=True, exist_ok=True)

        def batch(start: int) -> list[dict]:
            chunk = files[start:start + self.batch_size]
            return self._records(chunk, list(decoders.map(self.load, chunk)), start, cam_dir,
                                 cam_method)

        with self.classifier.engine.streams() as streams, \
                ThreadPoolExecutor(self.workers) as decoders, \
                ThreadPoolExecutor(1 if cam_dir else streams) as forwards, \
                progress(total=len(files), desc="predict", unit="img") as bar:
            starts = range(0, len(files), self.batch_size)
            for records in ordered(forwards, batch, starts, ahead=streams + 1):
                yield from records
                bar.update(len(records))

    def _records(self, chunk, loaded, start, cam_dir, cam_method) -> list[dict]:
        records: list[dict] = [{"file": str(p), "error": item} if isinstance(item, str) else {}
                               for p, item in zip(chunk, loaded)]
        ok = [i for i, record in enumerate(records) if not record]
        if not ok:
            return records
        prepared = [loaded[i] for i in ok]
        inputs = np.stack([p.pixels for p in prepared])
        logits, embeddings = self.classifier.forward(inputs)
        results = self.classifier.results(prepared, logits, embeddings)
        cams = self._cams(inputs, logits.argmax(axis=1), cam_method) if cam_dir else None
        for j, i in enumerate(ok):
            records[i] = {"file": str(chunk[i]), **results[j], "checkpoint": self.identity}
            if results[j]["ood"].get("flagged"):
                log.warning("%s: out of distribution (score %.2f > %.2f): the prediction is "
                            "unreliable", chunk[i], results[j]["ood"]["score"],
                            results[j]["ood"]["threshold"])
            if cams is not None:
                png = cam_dir / f"{start + i:05d}_{chunk[i].stem}.png"
                Image.fromarray(_overlay(prepared[j].boxed, cams[j])).save(png)
                records[i]["gradcam"] = str(png)
        if self.anomaly is not None:
            self._add_anomaly(records, [chunk[i] for i in ok], [p.boxed for p in prepared],
                              ok, start)
        return records

    def _cams(self, inputs: np.ndarray, targets: np.ndarray, method: str) -> np.ndarray:
        """Grad-CAM maps on the checkpoint's torch model (gradients): torch loads only here."""
        import torch

        from assurexray.explain.cam import compute_cams
        return compute_cams(self.classifier.cam_model(), torch.from_numpy(inputs), targets, method)

    def _add_anomaly(self, records, paths, boxed, ok, start) -> None:
        from assurexray.anomaly.detector import anomaly_entries  # imports torch
        assert self.anomaly is not None  # called only with an anomaly model loaded
        model, meta, path, map_dir = self.anomaly
        entries, maps = anomaly_entries(model, meta, boxed, self.batch_size,
                                        self.classifier.device)
        if map_dir is not None:
            map_dir.mkdir(parents=True, exist_ok=True)
        for j, i in enumerate(ok):
            entry = {**entries[j], "checkpoint": str(path)}
            if map_dir is not None:
                png = map_dir / f"{start + i:05d}_{paths[j].stem}.png"
                Image.fromarray(_overlay(boxed[j], maps[j])).save(png)
                entry["map"] = str(png)
            records[i]["anomaly"] = entry


def ordered(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T],
            ahead: int) -> Iterator[R]:
    """``pool.map(fn, items)`` that keeps at most ``ahead`` calls submitted (bounded memory on
    a large folder), results in order."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def collect_files(inputs: Sequence[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(files to classify, (path, reason) for folders without any image)."""
    files, empty = [], []
    for path in inputs:
        if not path.is_dir():
            files.append(path)   # a missing or odd file fails in read_image, with its reason
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


def _overlay(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    from assurexray.explain.cam import overlay  # imports torch: only for overlays
    return overlay(image, heatmap)


def quote_test_rates(classifier: Classifier, explicit: Path | None) -> None:
    """Load the test rates quoted beside each decision: from ``explicit`` (any problem is an
    error) or the default file when present (a mismatch is a warning: validation rates only)."""
    if not classifier.meta.operating_points:
        return
    path = explicit or (TEST_RATES if TEST_RATES.is_file() else None)
    try:
        if path is None:
            raise FileNotFoundError(f"no {TEST_RATES} (or --test-rates)")
        classifier.load_test_rates(path)
    except (FileNotFoundError, AssureXRayError) as exc:
        if explicit:
            raise
        log.warning("%s: decisions quote validation rates only (measured on the images their "
                    "thresholds were chosen on)", exc)


def _beside(checkpoint: Path, name: str) -> Path | None:
    path = checkpoint.parent / name
    return path if path.is_file() else None


def _jsonl(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    return (out / "predictions.jsonl").open("w")
