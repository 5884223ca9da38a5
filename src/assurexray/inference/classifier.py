"""The inference core: classify decoded images, files or uploaded bytes with a checkpoint.

Used by ``assurexray predict`` and by the service, so both give the same numbers as the
evaluate stage: ``imageio`` reader (reduced JPEG decode, as the cache) -> geometry check ->
``cache.letterbox`` ->
``transforms.eval_transform``'s numbers (all read from the checkpoint's meta) -> one forward pass
of the inference engine (``engines``: ONNX Runtime or torch) that yields logits and the
penultimate-layer embedding. A calibrated checkpoint adds calibrated
probabilities and each task's decision at the thresholds calibrate fitted on the calibrated
validation probabilities (``meta.operating_points``); with a training reference the result
also carries the out-of-distribution verdict.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.special import softmax

from assurexray.data.cache import letterbox
from assurexray.data.imageio import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, Upload, read_decoded
from assurexray.evaluation.operating_points import decide, read_test_rates
from assurexray.inference.engines import Engine, load_engine
from assurexray.inference.features import content_columns, image_stats
from assurexray.inference.ood import check_geometry
from assurexray.inference.reference import Reference, file_sha256, load_reference
from assurexray.params import OodParams


@dataclass(frozen=True)
class Prepared:
    """One decoded input ready for the model."""
    pixels: np.ndarray     # (3, S, S) float32 normalized model input
    boxed: np.ndarray      # (C, C) uint8 letterboxed image (for overlays)
    stats: np.ndarray      # image statistics (features.FEATURES)


def model_input(boxed: np.ndarray, image_size: int, mean, std) -> np.ndarray:
    """``transforms.eval_transform`` (INTER_AREA resize, grey to 3 channels, normalization) as
    a (3, S, S) float32 array, the same numbers without albumentations, which imports torch."""
    small = cv2.resize(boxed, (image_size, image_size), interpolation=cv2.INTER_AREA)
    scale = np.float32(1) / (np.asarray(std, dtype=np.float32) * 255)
    lut = (np.arange(256, dtype=np.float32)[None, :]
           - np.asarray(mean, dtype=np.float32)[:, None] * 255) * scale[:, None]
    return np.ascontiguousarray(lut[:, small])


# The analyze stage's metrics (the thresholds measured on test) as the pipeline lays them out:
# the default source of the test rates predict and the service quote beside each decision.
DEFAULT_TEST_RATES = Path("metrics/analysis.json")


class Classifier:
    def __init__(self, engine: Engine, checkpoint: str | Path, checkpoint_sha256: str,
                 reference: Reference | None = None):
        self.engine, self.meta = engine, engine.info
        self.checkpoint = Path(checkpoint)
        self.classes = list(self.meta.classes)
        self.reference = reference
        self.test_rates: dict | None = None   # quoted beside each decision (load_test_rates)
        self.ood_params = reference.ood if reference else OodParams()
        self.device = engine.device
        self._cam_model: Any = None
        self._cam_lock = threading.Lock()
        self.identity: dict[str, Any] = {"backbone": self.meta.backbone, "classes": self.classes,
                         "git_rev": self.meta.git_rev, "split": self.meta.split,
                         "temperature": self.meta.temperature,
                         "checkpoint_sha256": checkpoint_sha256, "engine": engine.name}

    @classmethod
    def from_files(cls, checkpoint: str | Path, reference: str | Path | None = None,
                   engine: str = "onnxruntime") -> Classifier:
        """Everything from the pipeline's outputs; a reference of another checkpoint is refused.
        ``engine``: ``engines.ENGINES`` (onnxruntime falls back to torch, saying why)."""
        sha = file_sha256(checkpoint)
        ref = load_reference(reference, sha) if reference else None
        return cls(load_engine(checkpoint, sha, engine), checkpoint, sha, ref)

    @classmethod
    def from_model(cls, model, meta, checkpoint: str | Path, checkpoint_sha256: str,
                   reference: Reference | None = None) -> Classifier:
        """A loaded torch model (``load_checkpoint``'s pair) on the torch engine."""
        from assurexray.inference.torch_engine import TorchEngine
        return cls(TorchEngine(model, meta), checkpoint, checkpoint_sha256, reference)

    def load_test_rates(self, path: str | Path) -> None:
        """Quote beside each decision its test rates, which the analyze stage measured at the
        same thresholds (``path``: its metrics/analysis.json); another run's file is refused."""
        self.test_rates = read_test_rates(path, self.meta.operating_points or {})

    def cam_model(self):
        """A private copy of the checkpoint's torch model for Grad-CAM (gradients need torch,
        whatever the engine; it hooks the model, so never the one forward streams share),
        loaded on first use: torch is imported only then with the ONNX engine."""
        with self._cam_lock:
            if self._cam_model is None:
                from assurexray.training.checkpoint import load_checkpoint
                self._cam_model, _ = load_checkpoint(self.checkpoint, self.device)
            return self._cam_model

    # ---- decoding -------------------------------------------------------------------------
    def decode_file(self, path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Prepared:
        return self.prepare(*read_decoded(path, self.meta.cache_size, max_pixels))

    def decode_bytes(self, data: bytes, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS,
                     max_bytes: int = DEFAULT_MAX_BYTES) -> Prepared:
        return self.prepare(*read_decoded(Upload(data, name), self.meta.cache_size, max_pixels,
                                          max_bytes))

    def prepare(self, gray: np.ndarray, full: tuple[int, int], info: dict) -> Prepared:
        """Reject degenerate geometry (ood.RejectedInput), then the evaluation preprocessing.
        ``full`` is the (width, height) of the whole image when ``gray`` is a reduced decode;
        ``info`` is ``imageio.read_decoded``'s."""
        check_geometry(gray, full, self.ood_params)
        boxed, *_ = letterbox(gray, self.meta.cache_size, full)
        pixels = model_input(boxed, self.meta.image_size, self.meta.mean, self.meta.std)
        return Prepared(pixels, boxed, image_stats(gray, full, info))

    # ---- inference ------------------------------------------------------------------------
    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, embeddings) of a float32 (N, 3, S, S) batch; thread-safe (concurrent streams)."""
        return self.engine.forward(batch)

    def results(self, prepared: list[Prepared], logits: np.ndarray,
                embeddings: np.ndarray) -> list[dict]:
        """One result per input: probabilities, prediction, decision and OOD verdict."""
        ood = self._ood(embeddings, np.stack([p.stats for p in prepared]))
        return [self._result(row, verdict) for row, verdict in zip(logits, ood)]

    def _result(self, logits: np.ndarray, ood: dict) -> dict:
        logits = logits.astype(np.float64)
        probs = softmax(logits)
        result = {"pred": self.classes[int(np.argmax(logits))],
                  "probs": dict(zip(self.classes, map(float, probs)))}
        if self.meta.temperature is not None:
            calibrated = softmax(logits / self.meta.temperature)
            result["calibrated_probs"] = dict(zip(self.classes, map(float, calibrated)))
            if self.meta.operating_points:  # fitted on this calibrated scale by calibrate
                result["decisions"] = decide(self.meta.operating_points, calibrated, self.classes,
                                             self.test_rates)
        result["ood"] = ood
        return result

    def _ood(self, embeddings: np.ndarray, stats: np.ndarray) -> list[dict]:
        if self.reference is None:
            return [{"checked": False, "note": "no training reference given: out-of-distribution "
                                               "inputs are not detected"}] * len(stats)
        scorer = self.reference.scorer
        scores = scorer.score(embeddings, stats[:, content_columns()])
        return [{"checked": True, "flagged": bool(s > scorer.threshold), "score": float(s),
                 "threshold": scorer.threshold} for s in scores]
