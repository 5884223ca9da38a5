"""The inference core: classify decoded images, files or uploaded bytes with a checkpoint.

Used by ``assurexray predict`` and by the service, so both give the same numbers as the
evaluate stage: ``imageio`` reader -> geometry check -> ``cache.letterbox(cache_size)`` ->
``transforms.eval_transform`` (all read from the checkpoint's meta) -> one forward pass that
yields logits and the penultimate-layer embedding. With a training reference the result also
carries the out-of-distribution verdict; with the analysis metrics, the malignant-vs-rest
decision at the operating point chosen on validation.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax

from assurexray.data.cache import letterbox
from assurexray.data.imageio import DEFAULT_MAX_PIXELS, Upload, header_info, read_image, read_image_bytes
from assurexray.data.transforms import eval_transform
from assurexray.errors import AssureXRayError
from assurexray.evaluation.operating_points import malignant_index
from assurexray.inference.features import content_columns, forward_with_embeddings, image_stats
from assurexray.inference.ood import check_geometry
from assurexray.inference.reference import Reference, file_sha256, load_reference
from assurexray.params import OodParams
from assurexray.training.checkpoint import load_checkpoint
from assurexray.training.models import default_device

OPERATING_RULE = "youden"


@dataclass(frozen=True)
class Prepared:
    """One decoded input ready for the model."""
    tensor: torch.Tensor   # (3, S, S) normalized model input
    boxed: np.ndarray      # (C, C) uint8 letterboxed image (for overlays)
    stats: np.ndarray      # image statistics (features.FEATURES)


class Classifier:
    def __init__(self, model: torch.nn.Module, meta: dict, checkpoint_sha256: str,
                 reference: Reference | None = None, operating_point: dict | None = None):
        self.model, self.meta = model, meta
        self.classes = list(meta["classes"])
        self.reference, self.operating_point = reference, operating_point
        self.ood_params = reference.ood if reference else OodParams()
        self.transform = eval_transform(meta["image_size"], meta["mean"], meta["std"])
        self.device = next(model.parameters()).device
        self.identity = {"backbone": meta["backbone"], "classes": self.classes,
                         "git_rev": meta["git_rev"], "split": meta["split"],
                         "temperature": meta.get("temperature"),
                         "checkpoint_sha256": checkpoint_sha256}

    @classmethod
    def from_files(cls, checkpoint: str | Path, reference: str | Path | None = None,
                   analysis: str | Path | None = None, device=None) -> Classifier:
        """Everything from the pipeline's outputs; a reference of another checkpoint is refused."""
        model, meta = load_checkpoint(checkpoint, device or default_device())
        sha = file_sha256(checkpoint)
        ref = load_reference(reference, sha) if reference else None
        point = read_operating_point(analysis, meta["classes"]) if analysis else None
        return cls(model, meta, sha, ref, point)

    # ---- decoding -------------------------------------------------------------------------
    def decode_file(self, path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Prepared:
        return self.prepare(read_image(path, max_pixels), header_info(path))

    def decode_bytes(self, data: bytes, name: str = "upload",
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> Prepared:
        gray = read_image_bytes(data, name, max_pixels)
        return self.prepare(gray, header_info(Upload(data, name)))

    def prepare(self, gray: np.ndarray, header: dict) -> Prepared:
        """Reject degenerate geometry (ood.RejectedInput), then the evaluation preprocessing."""
        check_geometry(gray, self.ood_params)
        boxed, *_ = letterbox(gray, self.meta["cache_size"])
        return Prepared(self.transform(image=boxed)["image"], boxed, image_stats(gray, header))

    # ---- inference ------------------------------------------------------------------------
    def forward(self, tensors: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(logits, embeddings) of a (N, 3, S, S) batch."""
        return forward_with_embeddings(self.model, tensors.to(self.device))

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
        if self.meta.get("temperature") is not None:
            calibrated = softmax(logits / self.meta["temperature"])
            result["calibrated_probs"] = dict(zip(self.classes, map(float, calibrated)))
        if self.operating_point is not None:
            result["decision"] = self._decision(probs)
        result["ood"] = ood
        return result

    def _decision(self, probs: np.ndarray) -> dict:
        point = self.operating_point
        # analyze picks the threshold on the uncalibrated validation probabilities
        score = float(probs[point["class_index"]])
        return {**{k: v for k, v in point.items() if k != "class_index"},
                "score": score, "positive": score >= point["threshold"]}

    def _ood(self, embeddings: np.ndarray, stats: np.ndarray) -> list[dict]:
        if self.reference is None:
            return [{"checked": False, "note": "no training reference given: out-of-distribution "
                                               "inputs are not detected"}] * len(stats)
        scorer = self.reference.scorer
        scores = scorer.score(embeddings, stats[:, content_columns()])
        return [{"checked": True, "flagged": bool(s > scorer.threshold), "score": float(s),
                 "threshold": scorer.threshold} for s in scores]


class OperatingPointError(AssureXRayError, ValueError):
    """The analysis metrics lack the validation operating point."""


def read_operating_point(path: str | Path, classes: list[str]) -> dict:
    """The malignant-vs-rest threshold analyze chose on validation, with its validation rates."""
    path = Path(path)
    try:
        point = json.loads(path.read_text())["operating_points"]["malignant_vs_rest"][OPERATING_RULE]
        threshold, val = float(point["threshold"]), point["val"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OperatingPointError(f"{path}: no malignant_vs_rest {OPERATING_RULE} operating point "
                                  f"({exc}); run the analyze stage") from exc
    index = malignant_index(classes)
    return {"task": f"{classes[index]} vs rest", "rule": f"{OPERATING_RULE} (chosen on validation)",
            "class_index": index, "threshold": threshold,
            "val_sensitivity": val["sensitivity"], "val_specificity": val["specificity"]}
