"""The ``onnxruntime`` inference engine: the ONNX graph the ``export`` stage wrote, run by ONNX
Runtime (imports neither torch nor timm, so ``predict`` and ``drift`` start fast).

The graph carries, as metadata, the SHA-256 of the checkpoint it was exported from, that
checkpoint's meta (classes, sizes, normalization, temperature, operating points) and torch's
outputs on a fixed probe batch. Loading refuses a graph of another checkpoint and runs the probe
once: an ONNX Runtime that does not reproduce torch's probabilities within
``engines.PARITY_TOLERANCE`` is not used (``engines.load_engine`` then falls back to torch).

On a CPU it runs like the torch engine's streams: one single-threaded pass per core side by
side (concurrent ``run`` calls on one session), which leaves no spinning worker threads in the
way of the decoding threads.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort

from assurexray.inference.engines import EngineUnavailable, ModelInfo, check_parity, probe_batch

# Metadata keys the export stage writes into the graph (``export.export_onnx``).
SHA_KEY, META_KEY, PARITY_KEY = ("assurexray.checkpoint_sha256", "assurexray.meta",
                                 "assurexray.parity")
INPUT, OUTPUTS = "image", ["logits", "embedding"]


def cpu_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class OnnxEngine:
    name = "onnxruntime"

    def __init__(self, session: ort.InferenceSession, info: ModelInfo, streams: int):
        self.session, self.info, self._streams = session, info, streams
        self.device = "cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu"

    @classmethod
    def load(cls, path: Path, sha256: str | None, threads: int = 1) -> OnnxEngine:
        """The graph at ``path`` for the checkpoint of SHA-256 ``sha256`` (None: any), each
        pass on ``threads`` threads; EngineUnavailable names what is wrong."""
        if not path.is_file():
            raise EngineUnavailable(f"no ONNX graph at {path}; the export stage writes it "
                                    "(dvc repro export)")
        session = _session(path, threads)
        metadata = session.get_modelmeta().custom_metadata_map
        if not {SHA_KEY, META_KEY, PARITY_KEY} <= set(metadata):
            raise EngineUnavailable(f"{path}: not written by the export stage (metadata missing)")
        if sha256 is not None and metadata[SHA_KEY] != sha256:
            raise EngineUnavailable(f"{path} was exported from another checkpoint (SHA-256 "
                                    f"{metadata[SHA_KEY][:12]}...); rerun the export stage")
        info = ModelInfo.from_mapping(json.loads(metadata[META_KEY]))
        on_gpu = "CUDAExecutionProvider" in session.get_providers()
        engine = cls(session, info, 1 if on_gpu else max(1, cpu_cores() // threads))
        probe = json.loads(metadata[PARITY_KEY])
        failed = check_parity(probe, *engine.forward(probe_batch(info.image_size, len(probe["logits"]))))
        if failed:
            raise EngineUnavailable(f"{path}: {failed}")
        return engine

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, embeddings = self.session.run(OUTPUTS, {INPUT: np.ascontiguousarray(batch)})
        return logits, embeddings

    @contextmanager
    def streams(self) -> Iterator[int]:
        yield self._streams


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3   # errors only: its warnings are about unused initializers
    # A CUDA build of onnxruntime runs on the GPU when there is one; the CPU provider always works.
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                 if p in ort.get_available_providers()]
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for a broken file
        raise EngineUnavailable(f"{path}: ONNX Runtime cannot load it ({exc})") from exc
