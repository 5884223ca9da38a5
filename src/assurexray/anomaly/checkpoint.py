"""The autoencoder checkpoint: the classifier's contract (``{"state_dict", "meta"}``, plain data,
``weights_only`` loading, atomic write, provenance in a ``.provenance.json`` sidecar) with an
autoencoder's meta.

``meta`` holds everything needed to score an image without params.yaml: the architecture and
its constructor keywords, the input pipeline (cache size, image size; inputs are [0, 1]
grayscale), the score settings and the normal class it was trained on.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from assurexray.anomaly.models import build_autoencoder
from assurexray.training.checkpoint import (
    PROVENANCE_META,
    UNKNOWN_PROVENANCE,
    CheckpointError,
    _check_plain,
    atomic_save,
    meta_from_dict,
    provenance,
    provenance_path,
    read_payload,
    read_provenance,
)

KIND = "autoencoder"
# A file in the checkpoint's place holding only why no detector was trained (DVC needs the
# stage's outputs; readers get the reason).
NOT_TRAINED = "not_trained"


@dataclass(frozen=True)
class AutoencoderMeta:
    """An autoencoder checkpoint's metadata, as the classifier's CheckpointMeta: every field
    without a default must be in every checkpoint, and a missing, unknown or mistyped key stops
    loading with a CheckpointError naming file and key."""
    arch: str                    # anomaly.models.ARCHS
    config: dict                 # the constructor keywords (build_autoencoder)
    image_size: int              # model input side (px); inputs are [0, 1] grayscale
    cache_size: int              # letterbox side of the cache it was trained on
    classes: list[str]           # the source's classes, in the index's order
    normal_class: str            # the class it learnt from
    score: dict                  # AnomalyScoreParams as plain data (primary score, top-k, ...)
    noise_std: float             # > 0: trained as a denoising autoencoder
    params: dict                 # params.yaml as trained
    split: str
    epoch: int                   # the selected epoch, 0-based
    best_val_loss: float         # validation reconstruction MSE at that epoch
    n_train_normals: int
    # Provenance: written to the sidecar, merged back by load_autoencoder.
    git_rev: str | None = None
    git_dirty: bool | None = None
    created_at: str | None = None


def save_autoencoder(path: str | Path, model: nn.Module, meta: AutoencoderMeta) -> None:
    path = Path(path)
    plain = {k: v for k, v in dataclasses.asdict(meta).items() if k not in PROVENANCE_META}
    _check_plain(plain, "meta")
    meta_from_dict(plain, path, AutoencoderMeta)  # what is written must load back
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_save({"state_dict": state, "meta": {**plain, "kind": KIND}}, path)
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


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu"
                     ) -> tuple[nn.Module, AutoencoderMeta]:
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
    if "state_dict" not in payload:
        raise CheckpointError(f"{path}: meta lacks ['state_dict']")
    stored = {k: v for k, v in meta.items() if k != "kind"}
    ae = meta_from_dict({**UNKNOWN_PROVENANCE, **stored, **read_provenance(path)}, path, AutoencoderMeta)
    model = build_autoencoder(ae.arch, ae.image_size, ae.config)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {ae.arch}: {exc}") from exc
    return model.to(device).eval(), ae


def check_cache_size(meta: AutoencoderMeta, cache, cache_dir) -> None:
    """The autoencoder must see images letterboxed at the size it was trained on."""
    if cache.size != meta.cache_size:
        raise CheckpointError(f"{cache_dir}: cache images are {cache.size} px but the autoencoder "
                              f"was trained on a {meta.cache_size} px cache; rerun anomaly_train")
