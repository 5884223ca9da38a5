"""The ``torch`` inference engine: the checkpoint's model, traced by TorchScript on its first
batch (``traced_with_embeddings``), in ``streams.forward_streams``. Evaluation and
Grad-CAM always run on torch (Grad-CAM needs gradients); predict, the service, drift and the
reference stage use it when ``inference.engine`` is ``torch`` or ONNX Runtime is unavailable.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import warnings
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from assurexray.inference.engines import ModelInfo
from assurexray.inference.streams import forward_streams
from assurexray.training.checkpoint import CheckpointMeta, load_checkpoint
from assurexray.training.models import default_device

log = logging.getLogger(__name__)


class TorchEngine:
    name = "torch"

    def __init__(self, model: torch.nn.Module, meta: CheckpointMeta):
        self.model, self.meta = model, meta
        self.info = ModelInfo.from_mapping(dataclasses.asdict(meta))
        self.torch_device = next(model.parameters()).device
        self.device = str(self.torch_device)
        self._traced: torch.nn.Module | None = None
        self._trace_lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path) -> TorchEngine:
        return cls(*load_checkpoint(checkpoint, default_device()))

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, embeddings) of a (N, 3, S, S) batch; thread-safe (concurrent streams)."""
        inputs = torch.from_numpy(batch).to(self.torch_device, memory_format=torch.channels_last)
        with torch.inference_mode():
            return to_numpy(*self._module(inputs)(inputs))

    def _module(self, example: torch.Tensor) -> torch.nn.Module:
        """The traced model (traced on the first batch), or eager mode where it cannot be."""
        with self._trace_lock:
            if self._traced is None:
                self._traced = (traced_with_embeddings(self.model, example)
                                or WithEmbedding(self.model).eval())
            return self._traced

    def streams(self) -> AbstractContextManager[int]:
        return forward_streams(self.torch_device)


class WithEmbedding(torch.nn.Module):
    """A timm model as (logits (N, K), embedding (N, D)) from one forward pass.

    timm's ``forward_head(pre_logits=True)`` stops right before the classifier layer, so
    ``classifier(embedding)`` is exactly ``model(x)``: the same numbers as evaluation.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model: Any = model  # timm's forward_features / forward_head / get_classifier

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.model.forward_head(self.model.forward_features(inputs), pre_logits=True)
        return self.model.get_classifier()(emb), emb.flatten(1)


def traced_with_embeddings(model: torch.nn.Module,
                           example: torch.Tensor) -> torch.jit.ScriptModule | None:
    """``WithEmbedding(model)`` in eval mode, traced by TorchScript on ``example``.

    The traced graph runs the same kernels as eager mode (same numbers) without Python's
    per-module dispatch, a large share of a small batch's forward time on a CPU.
    Tracing is not freezing: batch norm stays unfolded, so the numbers do not move. None when
    the backbone cannot be traced (its forward depends on Python control flow).
    """
    head = WithEmbedding(model).eval()
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")   # TracerWarnings on shape arithmetic
            return torch.jit.trace(head, example, check_trace=False)
    except Exception as exc:  # eager mode still works; say why it is slower
        log.warning("%s cannot be traced (%s): inference runs in eager mode",
                    type(model).__name__, exc)
        return None


def to_numpy(logits: torch.Tensor, emb: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return logits.float().cpu().numpy(), emb.float().cpu().numpy()
