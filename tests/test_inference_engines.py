"""Inference engines: ONNX Runtime against torch on a small model (parity), the engine choice
and its fallbacks, and predict's fast start without torch."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from assurexray.data.transforms import eval_transform
from assurexray.evaluation.operating_points import fit_operating_points
from assurexray.inference.classifier import Classifier, model_input
from assurexray.inference.engines import PARITY_TOLERANCE, load_engine, onnx_path
from assurexray.inference.export import export_onnx, parity_report
from assurexray.inference.onnx_engine import PARITY_KEY, OnnxEngine
from assurexray.inference.reference import file_sha256
from assurexray.inference.torch_engine import TorchEngine
from assurexray.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from assurexray.training.models import build_model

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Normal", "Benign", "Malignant"]
IMAGE_SIZE, CACHE_SIZE = 64, 96


def small_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random mobilenetv3_small_100 with a temperature and operating points, as calibrate
    writes it; non-ImageNet normalization, which inference must read from the meta."""
    torch.manual_seed(seed)
    model = build_model("mobilenetv3_small_100", len(CLASSES), dropout=0.0)
    rng = np.random.default_rng(seed)
    y = np.arange(60) % 3
    probs = np.exp(rng.normal(size=(60, 3)) + 2 * np.eye(3)[y])
    points = fit_operating_points(y, probs / probs.sum(1, keepdims=True), CLASSES, 0.9, 0.9,
                                  "youden", "calibrated")
    save_checkpoint(path, model, CheckpointMeta(
        backbone="mobilenetv3_small_100", classes=CLASSES, image_size=IMAGE_SIZE,
        cache_size=CACHE_SIZE, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], dropout=0.0, params={},
        split="stratified", epoch=1, best_val_macro_auc=0.5, temperature=1.7,
        operating_points=points))
    return path


def radiographs(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    files = []
    for i in range(n):
        h, w = int(rng.integers(120, 200)), int(rng.integers(80, 160))
        img = rng.integers(0, 60, (h, w), dtype=np.uint8)
        img[h // 4:3 * h // 4, w // 3:2 * w // 3] = rng.integers(120, 255)
        files.append(folder / f"{i:02d}.jpg")
        cv2.imwrite(str(files[-1]), cv2.GaussianBlur(img, (5, 5), 0))
    return files


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """calibrated.pt with its calibrated.onnx beside it, as the export stage writes them."""
    checkpoint = small_checkpoint(tmp_path_factory.mktemp("engines") / "calibrated.pt")
    model, meta = load_checkpoint(checkpoint)
    export_onnx(model, meta, file_sha256(checkpoint), onnx_path(checkpoint))
    return checkpoint


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return radiographs(tmp_path_factory.mktemp("images"), 24)


def test_model_input_equals_the_evaluation_transform():
    img = np.random.default_rng(0).integers(0, 256, (CACHE_SIZE, CACHE_SIZE), dtype=np.uint8)
    for mean, std in (([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), ([0.5] * 3, [0.5] * 3)):
        expected = eval_transform(IMAGE_SIZE, mean, std)(image=img)["image"].numpy()
        np.testing.assert_array_equal(model_input(img, IMAGE_SIZE, mean, std), expected)


def test_onnx_runtime_matches_torch_probabilities_and_decisions(exported, images):
    torch_engine = TorchEngine(*load_checkpoint(exported))
    onnx_engine = OnnxEngine.load(onnx_path(exported), file_sha256(exported))
    assert onnx_engine.info == torch_engine.info   # the meta travels in the graph
    classifier = Classifier(onnx_engine, exported, "sha")
    pixels = np.stack([classifier.decode_file(f).pixels for f in images])
    report = parity_report(torch_engine, onnx_engine, [pixels[:7], pixels[7:]])
    assert report["images"] == len(images)
    assert report["max_prob_diff"] <= PARITY_TOLERANCE
    assert report["max_calibrated_prob_diff"] <= PARITY_TOLERANCE
    assert report["max_embedding_rel_diff"] <= PARITY_TOLERANCE
    assert report["pred_differs"] == 0
    assert report["decisions"] == 2 * len(images) and report["decisions_differ"] == 0


def predict_records(*argv) -> list[dict]:
    import contextlib
    import io

    from assurexray.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["predict", *map(str, argv)]) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_predict_gives_the_same_results_on_both_engines(exported, images):
    by_engine = {engine: predict_records(*images, "--checkpoint", exported, "--engine", engine,
                                         "--batch-size", 5)
                 for engine in ("onnxruntime", "torch")}
    for fast, slow in zip(by_engine["onnxruntime"], by_engine["torch"]):
        assert fast["checkpoint"]["engine"] == "onnxruntime" and slow["checkpoint"]["engine"] == "torch"
        assert fast["pred"] == slow["pred"]
        for key in ("probs", "calibrated_probs"):
            np.testing.assert_allclose(list(fast[key].values()), list(slow[key].values()),
                                       atol=PARITY_TOLERANCE)
        assert {t: d["positive"] for t, d in fast["decisions"].items()} == \
               {t: d["positive"] for t, d in slow["decisions"].items()}


def fallback_reason(caplog, checkpoint: Path) -> str:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="assurexray.inference.engines"):
        engine = load_engine(checkpoint, file_sha256(checkpoint), "onnxruntime")
    assert engine.name == "torch"
    (record,) = caplog.records
    return record.getMessage()


def test_engine_falls_back_to_torch_saying_why(exported, tmp_path, caplog, monkeypatch):
    assert load_engine(exported, file_sha256(exported), "onnxruntime").name == "onnxruntime"
    assert load_engine(exported, file_sha256(exported), "torch").name == "torch"

    alone = small_checkpoint(tmp_path / "alone.pt")
    assert "no ONNX graph" in fallback_reason(caplog, alone)

    other = small_checkpoint(tmp_path / "other.pt", seed=1)   # another checkpoint's graph
    onnx_path(other).write_bytes(onnx_path(exported).read_bytes())
    assert "another checkpoint" in fallback_reason(caplog, other)

    drifted = tmp_path / "drifted.pt"   # a runtime that does not reproduce torch's numbers
    drifted.write_bytes(exported.read_bytes())
    graph = onnx.load(onnx_path(exported))
    for prop in graph.metadata_props:
        if prop.key == PARITY_KEY:
            probe = json.loads(prop.value)
            probe["logits"] = (np.asarray(probe["logits"]) + [0.0, 0.0, 0.01]).tolist()
            prop.value = json.dumps(probe)
    onnx.save(graph, onnx_path(drifted))
    assert "parity check failed" in fallback_reason(caplog, drifted)

    broken = tmp_path / "broken.pt"
    broken.write_bytes(exported.read_bytes())
    onnx_path(broken).write_bytes(b"not an onnx graph")
    assert "cannot load it" in fallback_reason(caplog, broken)

    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # not installed
    monkeypatch.delitem(sys.modules, "assurexray.inference.onnx_engine")
    assert "not installed" in fallback_reason(caplog, exported)


def test_predict_on_the_onnx_engine_imports_neither_torch_nor_timm(exported, images):
    script = (
        "import sys\n"
        "from assurexray.cli import main\n"
        f"code = main(['predict', {str(images[0])!r}, '--checkpoint', {str(exported)!r}, "
        "'--engine', 'onnxruntime'])\n"
        "assert code == 0, code\n"
        "print('LOADED', sorted(m for m in ('torch', 'timm') if m in sys.modules))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout.splitlines()[0])
    assert record["checkpoint"]["engine"] == "onnxruntime"   # no fallback happened
    assert run.stdout.splitlines()[-1] == "LOADED []"
