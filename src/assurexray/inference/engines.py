"""Inference engines: what runs the classifier's forward pass, chosen by ``inference.engine``.

- ``torch``: the checkpoint's model, traced by TorchScript (``torch_engine``);
- ``onnxruntime``: the same model exported once to ONNX by the ``export`` stage
  (``models/calibrated.onnx`` beside ``models/calibrated.pt``) and run by ONNX Runtime on its
  CPU provider (``onnx_engine``), 2-3 times faster on a CPU and without importing torch or timm.

Both take a float32 (N, 3, S, S) batch and return (logits (N, K), embedding (N, D)) as numpy
arrays, so everything after the forward pass is shared. ``load_engine`` falls back from
``onnxruntime`` to ``torch`` with one warning saying why (onnxruntime not installed, no ONNX
graph beside the checkpoint, a graph of another checkpoint, or a failed parity check).
This module imports neither torch nor onnxruntime: each engine's module is imported only when
that engine is chosen.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from assurexray.errors import AssureXRayError

log = logging.getLogger(__name__)

# Probabilities of the ONNX graph and of torch may differ by at most this much (the parity
# check at load, the export stage and the tests use it).
PARITY_TOLERANCE = 1e-4


class EngineUnavailable(AssureXRayError, RuntimeError):
    """The chosen engine cannot run this checkpoint (the message says why)."""


@dataclass(frozen=True)
class ModelInfo:
    """What inference reads from a checkpoint's meta (``training.checkpoint.CheckpointMeta``),
    without torch: the ONNX graph carries the same mapping."""
    backbone: str
    classes: list[str]
    image_size: int
    cache_size: int
    mean: list[float]
    std: list[float]
    split: str
    temperature: float | None = None
    operating_points: dict | None = None
    git_rev: str | None = None

    @classmethod
    def from_mapping(cls, meta: dict) -> ModelInfo:
        """The fields of ``meta`` (a checkpoint meta as a dict) that inference needs."""
        return cls(**{f.name: meta[f.name] for f in dataclasses.fields(cls) if f.name in meta})


class Engine(Protocol):
    name: str
    info: ModelInfo
    device: str

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, embeddings) of a float32 (N, 3, S, S) batch; thread-safe."""
        ...

    def streams(self) -> AbstractContextManager[int]:
        """Within the block, how many forward passes should run side by side."""
        ...


def onnx_path(checkpoint: str | Path) -> Path:
    """The ONNX graph the export stage writes for a checkpoint: ``models/calibrated.pt`` ->
    ``models/calibrated.onnx``."""
    return Path(checkpoint).with_suffix(".onnx")


def _torch(checkpoint: Path, sha256: str) -> Engine:
    from assurexray.inference.torch_engine import TorchEngine
    return TorchEngine.from_checkpoint(checkpoint)


def _onnxruntime(checkpoint: Path, sha256: str) -> Engine:
    try:
        from assurexray.inference.onnx_engine import OnnxEngine
    except ImportError as exc:
        raise EngineUnavailable(f"onnxruntime is not installed ({exc})") from exc
    return OnnxEngine.load(onnx_path(checkpoint), sha256)


ENGINES: dict[str, Callable[[Path, str], Engine]] = {"onnxruntime": _onnxruntime, "torch": _torch}


def load_engine(checkpoint: str | Path, sha256: str, choice: str = "onnxruntime") -> Engine:
    """The ``choice`` engine for ``checkpoint`` (whose SHA-256 is ``sha256``); torch, with one
    warning naming the reason, when onnxruntime cannot run it."""
    checkpoint = Path(checkpoint)
    if choice not in ENGINES:
        raise ValueError(f"unknown inference engine {choice!r}: one of {', '.join(ENGINES)}")
    if choice == "torch":
        return _torch(checkpoint, sha256)
    try:
        return ENGINES[choice](checkpoint, sha256)
    except EngineUnavailable as exc:
        log.warning("inference engine %s unavailable (%s): running on torch", choice, exc)
        return _torch(checkpoint, sha256)


def check_parity(reference: dict[str, Any], logits: np.ndarray, embeddings: np.ndarray) -> str | None:
    """None when ``logits``/``embeddings`` match torch's recorded ``reference`` outputs on the
    same probe batch (probabilities within ``PARITY_TOLERANCE``, embeddings within it relative
    to their scale); else what differs."""
    from scipy.special import softmax
    want_logits = np.asarray(reference["logits"], dtype=np.float64)
    want_emb = np.asarray(reference["embedding"], dtype=np.float64)
    if logits.shape != want_logits.shape or embeddings.shape != want_emb.shape:
        return f"output shapes {logits.shape}, {embeddings.shape} differ from torch's"
    prob_diff = float(np.abs(softmax(logits.astype(np.float64), axis=1)
                             - softmax(want_logits, axis=1)).max())
    emb_diff = float(np.abs(embeddings - want_emb).max() / max(1.0, np.abs(want_emb).max()))
    if prob_diff > PARITY_TOLERANCE or emb_diff > PARITY_TOLERANCE:
        return (f"parity check failed: probabilities differ from torch's by {prob_diff:.2e}, "
                f"embeddings by {emb_diff:.2e} (tolerance {PARITY_TOLERANCE:g})")
    return None


def probe_batch(image_size: int, n: int = 2) -> np.ndarray:
    """The fixed input the parity check runs: standard normal noise from the legacy
    ``RandomState``, whose stream numpy keeps identical across versions (NEP 19)."""
    return np.random.RandomState(0).standard_normal((n, 3, image_size, image_size)).astype(np.float32)
