"""Export stage: the calibrated checkpoint as an ONNX graph for the onnxruntime inference engine.

Writes ``models/calibrated.onnx`` (logits and the embedding the OOD score uses; as metadata the
checkpoint's SHA-256, its meta and torch's outputs on a probe batch, which the engine checks on
load) and ``metrics/export.json``: the parity of ONNX Runtime with torch on the test images
(largest probability and embedding differences, predictions and decisions at the shipped
thresholds that differ). The stage fails when a probability differs by more than the tolerance
or a decision changes away from its threshold. Research use only.
"""
import argparse
import logging
import platform
from pathlib import Path

import numpy as np
import onnxruntime

from assurexray.console import run_main
from assurexray.data.datasets import read_split
from assurexray.errors import AssureXRayError
from assurexray.inference.export import OPSET, export_onnx, parity_report
from assurexray.inference.onnx_engine import OnnxEngine
from assurexray.inference.reference import file_sha256
from assurexray.inference.runner import load_for_inference
from assurexray.inference.torch_engine import TorchEngine
from assurexray.jsonio import write_json
from assurexray.params import load_params

log = logging.getLogger("export")


class ParityError(AssureXRayError, RuntimeError):
    """ONNX Runtime does not reproduce torch's results on the test images."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("params", "model", "cache", "splits", "out", "metrics"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()

    batch_size = load_params(args.params).evaluate.batch_size
    model, meta, cache, transform, _ = load_for_inference(args.model, args.cache)
    model = model.cpu()
    sha = file_sha256(args.model)
    export_onnx(model, meta, sha, args.out)
    onnx_engine = OnnxEngine.load(args.out, sha)   # refuses a graph failing the probe check
    ids, _ = read_split(args.splits / "test.csv", meta.classes)
    rows = [cache.row_of(i) for i in ids]
    batches = (_pixels(cache, rows[k:k + batch_size], transform)
               for k in range(0, len(rows), batch_size))
    parity = parity_report(TorchEngine(model, meta), onnx_engine, batches)
    write_json(args.metrics, {"onnx": str(args.out), "onnx_sha256": file_sha256(args.out),
                              "checkpoint_sha256": sha, "opset": OPSET,
                              "onnxruntime": onnxruntime.__version__,
                              "machine": platform.machine(), "test_parity": parity})
    log.info("%s: test images %d, max probability difference %.1e, embedding %.1e, "
             "%d/%d decisions differ (%d within tolerance of the threshold)", args.out,
             parity["images"], parity["max_prob_diff"], parity["max_embedding_rel_diff"],
             parity["decisions_differ"], parity["decisions"], parity["decisions_near_threshold"])
    if (parity["max_prob_diff"] > parity["tolerance"] or parity["decisions_differ"]
            or parity["pred_differs"]):
        raise ParityError(f"{args.out}: ONNX Runtime differs from torch on the test images "
                          f"(see {args.metrics})")


def _pixels(cache, rows, transform) -> np.ndarray:
    """The evaluation input of cache ``rows``, as evaluate builds it."""
    return np.stack([transform(image=np.ascontiguousarray(cache.images[r]))["image"].numpy()
                     for r in rows])


if __name__ == "__main__":
    run_main(main)
