"""The inference core: classify decoded images, files or uploaded bytes with a checkpoint.

Used by ``assurexray predict`` and by the service, so both give the same numbers as the
evaluate stage: ``imageio`` reader (reduced JPEG decode, as the cache) -> geometry check ->
``cache.letterbox`` ->
``transforms.eval_transform`` (all read from the checkpoint's meta) -> one forward pass that
yields logits and the penultimate-layer embedding. A calibrated checkpoint adds calibrated
probabilities and each task's decision at the thresholds calibrate fitted on the calibrated
validation probabilities (``meta.operating_points``); with a training reference the result
also carries the out-of-distribution verdict.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import softmax

from assurexray.data.cache import letterbox
from assurexray.data.imageio import DEFAULT_MAX_PIXELS, Upload, read_decoded
from assurexray.data.transforms import eval_transform
from assurexray.evaluation.operating_points import decide
from assurexray.inference.features import (
    WithEmbedding,
    content_columns,
    image_stats,
    to_numpy,
    traced_with_embeddings,
)
from assurexray.inference.ood import check_geometry
from assurexray.inference.reference import Reference, file_sha256, load_reference
from assurexray.params import OodParams
from assurexray.training.checkpoint import CheckpointMeta, load_checkpoint
from assurexray.training.models import default_device


@dataclass(frozen=True)
class Prepared:
    """One decoded input ready for the model."""
    tensor: torch.Tensor   # (3, S, S) normalized model input
    boxed: np.ndarray      # (C, C) uint8 letterboxed image (for overlays)
    stats: np.ndarray      # image statistics (features.FEATURES)


class Classifier:
    def __init__(self, model: torch.nn.Module, meta: CheckpointMeta, checkpoint_sha256: str,
                 reference: Reference | None = None):
        self.model, self.meta = model, meta
        self.classes = list(meta.classes)
        self.reference = reference
        self.ood_params = reference.ood if reference else OodParams()
        self.transform = eval_transform(meta.image_size, meta.mean, meta.std)
        self.device = next(model.parameters()).device
        self._traced: torch.nn.Module | None = None
        self._trace_lock = threading.Lock()
        self.identity: dict[str, Any] = {"backbone": meta.backbone, "classes": self.classes,
                         "git_rev": meta.git_rev, "split": meta.split,
                         "temperature": meta.temperature,
                         "checkpoint_sha256": checkpoint_sha256}

    @classmethod
    def from_files(cls, checkpoint: str | Path, reference: str | Path | None = None,
                   device=None) -> Classifier:
        """Everything from the pipeline's outputs; a reference of another checkpoint is refused."""
        model, meta = load_checkpoint(checkpoint, device or default_device())
        sha = file_sha256(checkpoint)
        ref = load_reference(reference, sha) if reference else None
        return cls(model, meta, sha, ref)

    # ---- decoding -------------------------------------------------------------------------
    def decode_file(self, path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Prepared:
        return self.prepare(*read_decoded(path, self.meta.cache_size, max_pixels))

    def decode_bytes(self, data: bytes, name: str = "upload",
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> Prepared:
        return self.prepare(*read_decoded(Upload(data, name), self.meta.cache_size, max_pixels))

    def prepare(self, gray: np.ndarray, full: tuple[int, int], info: dict) -> Prepared:
        """Reject degenerate geometry (ood.RejectedInput), then the evaluation preprocessing.
        ``full`` is the (width, height) of the whole image when ``gray`` is a reduced decode;
        ``info`` is ``imageio.read_decoded``'s."""
        check_geometry(gray, full, self.ood_params)
        boxed, *_ = letterbox(gray, self.meta.cache_size, full)
        # Contiguous here, in the decoding thread: stacking strided (HWC-ordered) tensors for the
        # batch is otherwise a slow serial copy.
        tensor = self.transform(image=boxed)["image"].contiguous()
        return Prepared(tensor, boxed, image_stats(gray, full, info))

    # ---- inference ------------------------------------------------------------------------
    def forward(self, tensors: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(logits, embeddings) of a (N, 3, S, S) batch; thread-safe (concurrent streams)."""
        tensors = tensors.to(self.device)
        with torch.inference_mode():
            return to_numpy(*self._module(tensors)(tensors))

    def _module(self, example: torch.Tensor) -> torch.nn.Module:
        """The traced model (traced on the first batch), or eager mode where it cannot be."""
        with self._trace_lock:
            if self._traced is None:
                self._traced = (traced_with_embeddings(self.model, example)
                                or WithEmbedding(self.model).eval())
            return self._traced

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
                result["decisions"] = decide(self.meta.operating_points, calibrated, self.classes)
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
