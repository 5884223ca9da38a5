"""The autoencoder checkpoint: the classifier's contract (``{"state_dict", "meta"}``, plain data,
``weights_only`` loading, atomic write, provenance in a ``.provenance.json`` sidecar) with an
autoencoder's meta.

``meta`` holds everything needed to score an image without params.yaml: the architecture and
its constructor keywords, the input pipeline (cache size, image size; inputs are [0, 1]
grayscale), the score settings and the normal class it was trained on.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from assurexray.anomaly.models import build_autoencoder
from assurexray.training.checkpoint import (
    CheckpointError,
    _check_plain,
    atomic_save,
    provenance,
    provenance_path,
    read_payload,
    read_provenance,
)

KIND = "autoencoder"
# A file in the checkpoint's place holding only why no detector was trained (DVC needs the
# stage's outputs; readers get the reason).
NOT_TRAINED = "not_trained"
REQUIRED_META = ("arch", "config", "image_size", "cache_size", "classes", "normal_class", "score",
                 "params", "split", "epoch", "best_val_loss")


def save_autoencoder(path: str | Path, model: nn.Module, meta: dict) -> None:
    path = Path(path)
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: meta lacks {missing}")
    meta = {**meta, "kind": KIND}
    _check_plain(meta, "meta")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_save({"state_dict": state, "meta": meta}, path)
    # As the classifier's: provenance in a sidecar, so identical weights are identical bytes.
    provenance_path(path).write_text(json.dumps(provenance(), indent=2) + "\n")


class NotTrained(CheckpointError):
    """The checkpoint file says why no detector was trained (``save_not_trained``)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: no anomaly detector was trained: {reason}")
        self.reason = reason


def save_not_trained(path: str | Path, reason: str) -> None:
    """Write, in the checkpoint's place, only the reason no detector was trained."""
    path = Path(path)
    atomic_save({"meta": {"kind": NOT_TRAINED, "reason": reason}}, path)
    provenance_path(path).write_text(json.dumps(provenance(), indent=2) + "\n")


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the autoencoder from its meta and load the weights (eval mode); ``NotTrained``
    when the file holds only the reason none was trained."""
    path = Path(path)
    payload = read_payload(path, "run anomaly_train")
    meta = payload.get("meta", {}) if isinstance(payload, dict) else {}
    if meta.get("kind") == NOT_TRAINED:
        raise NotTrained(path, str(meta.get("reason")))
    if meta.get("kind") != KIND:
        raise CheckpointError(f"{path}: not an autoencoder checkpoint (a classifier goes to "
                              "--checkpoint, an autoencoder to --anomaly-checkpoint)")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing or "state_dict" not in payload:
        raise CheckpointError(f"{path}: meta lacks {missing or ['state_dict']}")
    model = build_autoencoder(meta["arch"], meta["image_size"], meta["config"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {meta['arch']}: {exc}") from exc
    return model.to(device).eval(), {**meta, **read_provenance(path)}


def check_cache_size(meta: dict, cache, cache_dir) -> None:
    """The autoencoder must see images letterboxed at the size it was trained on."""
    if cache.size != meta["cache_size"]:
        raise CheckpointError(f"{cache_dir}: cache images are {cache.size} px but the autoencoder "
                              f"was trained on a {meta['cache_size']} px cache; rerun anomaly_train")
