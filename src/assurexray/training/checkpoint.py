"""The model checkpoint contract: ``{"state_dict", "meta"}``, plain data only.

Everything inside is a tensor or a primitive, so ``torch.load(..., weights_only=True)`` can read
it and a checkpoint from elsewhere cannot run code on load. ``meta`` is a ``CheckpointMeta``
stored with ``dataclasses.asdict``: what every later stage needs to rebuild the model and its
input pipeline without params.yaml.

Provenance (git revision, dirty flag, time) lives in a JSON sidecar beside the weights
(``model.pt`` -> ``model.provenance.json``), never in the ``.pt``: identical weights then give an
identical file, so a retrain that changes nothing leaves every downstream DVC stage up to date.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from assurexray.checked_dataclasses import ParamsError, from_dict
from assurexray.errors import AssureXRayError
from assurexray.training.models import build_model


class CheckpointError(AssureXRayError, ValueError):
    """A checkpoint file is unreadable, unsafe or lacks part of the contract."""


@dataclass(frozen=True)
class CheckpointMeta:
    """The checkpoint's metadata; fields without a default must be in every checkpoint."""
    backbone: str                # timm model name
    classes: list[str]           # in model output order
    image_size: int              # model input side (px)
    cache_size: int              # letterbox side of the cache the model was trained on
    mean: list[float]            # input normalization, per channel
    std: list[float]
    dropout: float
    params: dict                 # params.yaml as trained (params.to_dict)
    split: str
    epoch: int                   # the selected epoch, 0-based
    best_val_macro_auc: float | None     # None when undefined (a class absent from validation)
    # Where the initial weights came from (training.weights.WeightsSource as plain data).
    weights: dict | None = None
    temperature: float | None = None     # set by calibrate, fitted on validation logits
    # Set by calibrate: evaluation.operating_points.fit_operating_points on the calibrated
    # validation probabilities (plain data), the thresholds predict and the service decide at.
    operating_points: dict | None = None
    # Provenance: written to the sidecar by save_checkpoint, merged back by load_checkpoint.
    git_rev: str | None = None
    git_dirty: bool | None = None
    created_at: str | None = None


PROVENANCE_META = ("git_rev", "git_dirty", "created_at")
UNKNOWN_PROVENANCE = {"git_rev": "unknown", "git_dirty": None, "created_at": "unknown"}


def save_checkpoint(path: str | Path, model: nn.Module, meta: CheckpointMeta) -> None:
    """Write the weights and ``meta`` atomically, and the provenance sidecar beside them."""
    path = Path(path)
    plain = {k: v for k, v in dataclasses.asdict(meta).items() if k not in PROVENANCE_META}
    _check_plain(plain, "meta")
    meta_from_dict(plain, path)  # what is written must load back
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_save({"state_dict": state, "meta": plain}, path)
    provenance_path(path).write_text(json.dumps(provenance(), indent=2) + "\n")


def read_payload(path: Path, remedy: str) -> Any:
    """The saved object, loaded weights-only (no arbitrary unpickling); a missing file is a
    FileNotFoundError ending with ``remedy``, anything unloadable a CheckpointError."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; {remedy}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated file, or a disallowed (unsafe) object
        raise CheckpointError(f"{path}: not a loadable weights-only checkpoint ({exc})") from exc


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model (no pretrained download) and load the weights; eval mode, in the
    channels-last layout (its depthwise convolutions run 1.6x faster on a CPU)."""
    path = Path(path)
    payload = read_payload(path, "run the train stage first")
    if not isinstance(payload, dict) or not {"state_dict", "meta"} <= set(payload):
        raise CheckpointError(f"{path}: expected a dict with 'state_dict' and 'meta'")
    stored = payload["meta"] if isinstance(payload["meta"], dict) else {}
    meta = meta_from_dict({**UNKNOWN_PROVENANCE, **stored, **read_provenance(path)}
                          if stored else payload["meta"], path)
    model = build_model(meta.backbone, len(meta.classes), dropout=meta.dropout)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {meta.backbone}: {exc}") from exc
    model.to(memory_format=torch.channels_last)
    return model.to(device).eval(), meta


def meta_from_dict(raw, path: Path, cls: type = CheckpointMeta):
    """A stored meta mapping -> ``cls`` (CheckpointMeta, or the autoencoder's AutoencoderMeta);
    CheckpointError names the file and the key."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: meta is a {type(raw).__name__}, not a mapping")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING]
    missing = [k for k in required if k not in raw]
    if missing:
        raise CheckpointError(f"{path}: meta lacks {missing}")
    try:  # params' schema check: unknown keys and wrong types, named
        return from_dict(cls, raw, "meta.")
    except ParamsError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def atomic_save(obj, path: Path) -> None:
    """torch.save through a temporary file, so an interrupted write leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def provenance_path(checkpoint: str | Path) -> Path:
    """The provenance sidecar of a checkpoint: ``models/model.pt`` -> ``models/model.provenance.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".provenance.json")


def read_provenance(checkpoint: str | Path) -> dict:
    """The sidecar's provenance keys, or {} without a sidecar (a checkpoint copied alone, or
    one written before the sidecar existed, which holds the keys in its own meta)."""
    path = provenance_path(checkpoint)
    if not path.is_file():
        return {}
    try:
        stamp = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable provenance sidecar ({exc}); delete it or "
                              "rerun the stage that wrote the checkpoint") from exc
    return {k: stamp.get(k, UNKNOWN_PROVENANCE[k]) for k in PROVENANCE_META}


def provenance() -> dict:
    """git revision (or 'unknown'), whether the code or params differ from it, the time, and
    the numeric environment the weights came from (torch, CPU kernel level, threads)."""
    rev, dirty = "unknown", None
    try:
        rev = _git("rev-parse", "HEAD")
        # Only code and params count: `dvc repro` itself rewrites dvc.lock and the outputs.
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--",
                          "src", "stages", "params.yaml", "dvc.yaml"))
    except (OSError, subprocess.SubprocessError):
        pass  # not a git checkout (e.g. an exported tree): provenance stays 'unknown'
    return {"git_rev": rev, "git_dirty": dirty,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "torch": torch.__version__, "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads()}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()


def _check_plain(value, key: str) -> None:
    """Reject anything weights_only loading would refuse, naming the offending key."""
    # Exact types: numpy scalars subclass float but pickle as numpy objects.
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{key}[{i}]")
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{key}: key {k!r} is not a string")
            _check_plain(item, f"{key}.{k}")
        return
    raise CheckpointError(f"{key}: {type(value).__name__} cannot be stored in a weights-only "
                          "checkpoint; convert it to plain data")
