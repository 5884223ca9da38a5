"""A fitted feature-based detector (PatchCore or PaDiM): patch maps, image scores, checkpoint.

``config`` (plain data, chosen on validation by ``selection``) names the detector, the image
size, the feature levels and the score's aggregation; ``state`` holds its tensors (PatchCore:
the memory bank; PaDiM: channels, means, precisions). Image scores of the patch maps:

- ``max``: the farthest patch (PatchCore's image score);
- ``topk``: the mean of the top ``topk_percent`` % patches (less at the mercy of one patch).

The anomaly map is the patch map upsampled (bilinear) to the image, minus its lowest value, so
that localization's energy and thresholded region describe the excess over the image's floor.

The checkpoint is the autoencoders' contract: ``{"state", "meta"}`` of plain tensors and plain
data, written atomically, read with ``torch.load(weights_only=True)``, provenance in a sidecar;
``meta["kind"] == "feature_detector"``. ``load_anomaly_model`` opens either kind and
``anomaly_entries`` gives each image's record entry (``predict`` and the service).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from assurexray.anomaly import padim, patchcore
from assurexray.anomaly.checkpoint import NOT_TRAINED, AutoencoderMeta, NotTrained, load_autoencoder
from assurexray.anomaly.features import FeatureExtractor, patch_features
from assurexray.anomaly.scoring import AnomalyResult, score_letterboxed
from assurexray.training.checkpoint import (
    CheckpointError,
    _check_plain,
    atomic_save,
    provenance,
    provenance_path,
    read_payload,
    read_provenance,
)

KIND = "feature_detector"
DETECTORS = ("patchcore", "padim")
AGGREGATIONS = ("max", "topk")
STATE_KEYS = {"patchcore": ("bank",), "padim": ("channels", "mean", "precision")}
REQUIRED_META = ("detector", "config", "extractor", "cache_size", "classes", "normal_class",
                 "threshold", "selection", "n_train_normals", "params", "split")


def patch_maps(config: dict, state: dict[str, torch.Tensor],
               maps: dict[int, torch.Tensor]) -> torch.Tensor:
    """(N, h, w) patch anomaly scores from the backbone's level maps."""
    features = patch_features(maps, config["layers"])
    if config["detector"] == "patchcore":
        return patchcore.patch_scores(features, state["bank"], config["k"])
    return padim.mahalanobis(features[:, state["channels"]], state["mean"], state["precision"])


def aggregate(maps: torch.Tensor, how: str, topk_percent: float) -> np.ndarray:
    """(N,) image scores of (N, h, w) patch maps."""
    flat = maps.flatten(1)
    if how == "max":
        return flat.max(1).values.numpy()
    k = max(1, math.ceil(flat.shape[1] * topk_percent / 100))
    return flat.topk(k, dim=1).values.mean(1).numpy()


def image_scores(maps: torch.Tensor, topk_percent: float) -> dict[str, np.ndarray]:
    """Every aggregation's image scores (the chosen one is the primary score)."""
    return {how: aggregate(maps, how, topk_percent) for how in AGGREGATIONS}


def image_maps(maps: torch.Tensor, size: int) -> np.ndarray:
    """(N, size, size) anomaly maps: patch maps upsampled, each minus its minimum."""
    up = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear",
                       align_corners=False)[:, 0]
    return (up - up.flatten(1).min(1).values[:, None, None]).numpy()


def result(config: dict, state: dict, maps: dict[int, torch.Tensor]) -> AnomalyResult:
    """Scores and image-frame maps of images given as backbone level maps."""
    patches = patch_maps(config, state, maps)
    return AnomalyResult(image_scores(patches, config["topk_percent"]),
                         image_maps(patches, config["image_size"]), None)


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


class FeatureDetector:
    """The backbone (from the weights registry, as recorded) with a fitted detector."""

    def __init__(self, config: dict, state: dict[str, torch.Tensor], extractor: dict):
        self.config, self.state = config, state
        self.extractor = FeatureExtractor(extractor["backbone"], extractor["init"],
                                          extractor.get("file") if extractor["init"] == "file"
                                          else None, config["layers"])

    def score_letterboxed(self, images: list[np.ndarray], batch_size: int) -> AnomalyResult:
        """Scores and maps (detector frame) of letterboxed uint8 images, any box size."""
        levels = self.extractor(np.stack(images), self.config["image_size"], batch_size)
        return result(self.config, self.state, levels)


def save_detector(path: str | Path, state: dict[str, torch.Tensor], meta: dict) -> None:
    path = Path(path)
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: meta lacks {missing}")
    meta = {**meta, "kind": KIND}
    _check_plain(meta, "meta")
    atomic_save({"state": {k: v.detach().cpu().contiguous() for k, v in state.items()},
                 "meta": meta}, path)
    provenance_path(path).write_text(json.dumps(provenance(), indent=2) + "\n")


def load_detector(path: str | Path) -> tuple[FeatureDetector, dict]:
    """The detector of a checkpoint written by ``save_detector`` (weights-only load)."""
    path = Path(path)
    payload = read_payload(path, "run anomaly_fit")
    meta = payload.get("meta", {}) if isinstance(payload, dict) else {}
    if meta.get("kind") == NOT_TRAINED:
        raise NotTrained(path, str(meta.get("reason")))
    if meta.get("kind") != KIND:
        raise CheckpointError(f"{path}: not a feature-detector checkpoint")
    missing = [k for k in REQUIRED_META if k not in meta]
    detector = str(meta.get("detector"))
    state = payload.get("state", {})
    if missing or set(state) != set(STATE_KEYS.get(detector, ())):
        raise CheckpointError(f"{path}: meta lacks {missing} or the state does not fit "
                              f"detector {detector!r} (expected {STATE_KEYS.get(detector)})")
    return FeatureDetector(meta["config"], state, meta["extractor"]), {**meta,
                                                                       **read_provenance(path)}


def load_anomaly_model(path: str | Path, device: torch.device | str = "cpu"):
    """(model, meta) of an autoencoder or a feature detector checkpoint (``predict``)."""
    payload = read_payload(Path(path), "run anomaly_train or anomaly_fit")
    kind = payload.get("meta", {}).get("kind") if isinstance(payload, dict) else None
    return load_detector(path) if kind == KIND else load_autoencoder(path, device)


def summary(meta) -> tuple[str, str, float | None]:
    """(arch, primary score, decision threshold or None) of either kind's meta: an autoencoder's
    AutoencoderMeta has no threshold; a feature detector's meta holds its validation Youden point."""
    if isinstance(meta, AutoencoderMeta):
        return meta.arch, meta.score["primary"], None
    return meta["arch"], meta["score"]["primary"], meta.get("threshold")


def score_any(model, meta, images: list[np.ndarray], batch_size: int,
              device: torch.device | str = "cpu") -> AnomalyResult:
    """Scores and maps of letterboxed images by either kind of anomaly model."""
    if isinstance(model, FeatureDetector):
        return model.score_letterboxed(images, batch_size)
    return score_letterboxed(model, meta, images, batch_size, device)


def anomaly_entries(model, meta, images: list[np.ndarray], batch_size: int,
                    device: torch.device | str = "cpu") -> tuple[list[dict], np.ndarray]:
    """Each letterboxed image's ``anomaly`` entry and its map, by either kind of anomaly model.

    An entry holds every score, the primary one as ``score``, ``primary``, ``arch`` and, for a
    feature detector, ``decision`` at its validation Youden point (score >= threshold is
    anomalous). Maps (N, S, S) are scaled by each image's own maximum to [0, 1]: an overlay's
    colour scale, not comparable across images (the score is)."""
    result = score_any(model, meta, images, batch_size, device)
    arch, primary, threshold = summary(meta)
    entries = []
    for j in range(len(images)):
        scores = {name: float(v[j]) for name, v in result.scores.items()}
        entry: dict = {"score": scores[primary], "primary": primary, "scores": scores,
                       "arch": arch}
        if threshold is not None:
            entry["decision"] = {"anomalous": scores[primary] >= threshold,
                                 "threshold": threshold}
        entries.append(entry)
    peaks = np.maximum(result.maps.max(axis=(1, 2)), 1e-12)   # a flat map stays 0, not NaN
    return entries, result.maps / peaks[:, None, None]
