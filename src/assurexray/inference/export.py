"""The checkpoint as an ONNX graph for the ``onnxruntime`` engine, and its parity with torch.

``export_onnx`` writes ``torch_engine.WithEmbedding(model)`` (logits and the penultimate-layer
embedding the OOD score uses, from one pass, dynamic batch) with, as metadata, the SHA-256 of
the checkpoint file, its meta and torch's outputs on ``engines.probe_batch``: what
``onnx_engine.OnnxEngine.load`` checks before it serves. ``parity_report`` compares the two
engines on real images: probabilities, embeddings and every decision at the shipped thresholds.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import torch
from scipy.special import softmax

from assurexray.evaluation.operating_points import decide
from assurexray.inference.engines import PARITY_TOLERANCE, Engine, probe_batch
from assurexray.inference.onnx_engine import INPUT, META_KEY, OUTPUTS, PARITY_KEY, SHA_KEY
from assurexray.inference.torch_engine import WithEmbedding
from assurexray.training.checkpoint import CheckpointMeta

OPSET = 17


def export_onnx(model: torch.nn.Module, meta: CheckpointMeta, checkpoint_sha256: str,
                path: str | Path) -> Path:
    """Write the ONNX graph of ``model`` (a checkpoint of SHA-256 ``checkpoint_sha256``)
    atomically to ``path``."""
    head = WithEmbedding(model).eval().cpu()
    probe = probe_batch(meta.image_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) needs no onnxscript and reproduces torch's
        # logits to ~1e-11; its deprecation and tracer warnings say nothing about this graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(head, (torch.from_numpy(probe),), tmp, input_names=[INPUT],
                          output_names=OUTPUTS, opset_version=OPSET, dynamo=False,
                          dynamic_axes={name: {0: "batch"} for name in (INPUT, *OUTPUTS)})
        logits, embedding = (t.numpy() for t in head(torch.from_numpy(probe)))
    graph = onnx.load(tmp)
    plain = {k: v for k, v in dataclasses.asdict(meta).items() if k != "params"}
    onnx.helper.set_model_props(graph, {
        SHA_KEY: checkpoint_sha256, META_KEY: json.dumps(plain),
        PARITY_KEY: json.dumps({"logits": logits.tolist(), "embedding": embedding.tolist()})})
    onnx.save(graph, tmp)
    os.replace(tmp, path)
    return path


def parity_report(reference: Engine, candidate: Engine, batches: Iterable[np.ndarray]) -> dict:
    """How far ``candidate``'s outputs are from ``reference``'s on ``batches``: the largest
    probability, calibrated-probability and relative embedding differences, and the decisions
    at the shipped thresholds that differ, apart from those whose score lies within
    ``PARITY_TOLERANCE`` of the threshold (counted)."""
    info = reference.info
    report = {"images": 0, "max_prob_diff": 0.0, "max_calibrated_prob_diff": 0.0,
              "max_embedding_rel_diff": 0.0, "pred_differs": 0, "decisions": 0,
              "decisions_differ": 0, "decisions_near_threshold": 0,
              "tolerance": PARITY_TOLERANCE}
    temperature = info.temperature or 1.0
    for batch in batches:
        (ref_logits, ref_emb), (cand_logits, cand_emb) = (reference.forward(batch),
                                                          candidate.forward(batch))
        ref_probs, cand_probs = (softmax(x.astype(np.float64) / temperature, axis=1)
                                 for x in (ref_logits, cand_logits))
        report["images"] += len(batch)
        report["max_prob_diff"] = max(report["max_prob_diff"], float(np.abs(
            softmax(ref_logits.astype(np.float64), axis=1)
            - softmax(cand_logits.astype(np.float64), axis=1)).max()))
        report["max_calibrated_prob_diff"] = max(report["max_calibrated_prob_diff"],
                                                 float(np.abs(ref_probs - cand_probs).max()))
        report["max_embedding_rel_diff"] = max(report["max_embedding_rel_diff"], float(
            np.abs(ref_emb - cand_emb).max() / max(1.0, np.abs(ref_emb).max())))
        report["pred_differs"] += int(np.sum(ref_logits.argmax(1) != cand_logits.argmax(1)))
        if info.operating_points:
            for r, c in zip(ref_probs, cand_probs):
                _count_decisions(report, decide(info.operating_points, r, info.classes),
                                 decide(info.operating_points, c, info.classes))
    return report


def _count_decisions(report: dict, ref: dict, cand: dict) -> None:
    for task, decision in ref.items():
        if decision["positive"] is None:
            continue
        report["decisions"] += 1
        if abs(decision["score"] - decision["threshold"]) <= PARITY_TOLERANCE:
            report["decisions_near_threshold"] += 1
        elif decision["positive"] != cand[task]["positive"]:
            report["decisions_differ"] += 1
