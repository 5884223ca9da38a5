"""`assurexray serve --anomaly-checkpoint`: a tiny PatchCore served beside a tiny classifier adds
its score, decision and map to /predict (the numbers `predict` writes), /health names it, and a
missing or unsafe detector file is refused."""
from __future__ import annotations

import base64
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from assurexray.anomaly.detector import result, save_detector
from assurexray.anomaly.features import FeatureExtractor, flatten_patches, patch_features
from assurexray.cli import main
from assurexray.inference.classifier import Classifier
from assurexray.inference.reference import file_sha256
from assurexray.serve.app import create_app
from assurexray.serve.deps import Settings
from assurexray.serve.service import InputError
from serve_helpers import REPO
from test_predict import CACHE_SIZE, CLASSES, make_checkpoint, radiograph
from test_serve_api import BASE, LIMITS, started, upload

CONFIG = {"detector": "patchcore", "image_size": CACHE_SIZE, "layers": [2], "k": 1,
          "topk_percent": 10.0, "aggregation": "max"}


@dataclass(frozen=True)
class Served:
    checkpoint: Path
    detector: Path
    threshold: float
    normal: Path     # the image the memory bank was fitted on: scores below the threshold
    lesioned: Path   # the same with a bright square drawn on it: above


def fit_patchcore(root: Path, boxed: list[np.ndarray]) -> tuple[Path, float]:
    """A PatchCore whose bank is the first image's patches, saved with a threshold halfway
    between the two images' scores (as the classifier letterboxes them)."""
    extractor = FeatureExtractor("tf_efficientnet_lite0", "package", None, CONFIG["layers"])
    levels = extractor(np.stack(boxed), CACHE_SIZE)
    bank = flatten_patches(patch_features({lv: m[:1] for lv, m in levels.items()}, [2]))
    scores = result(CONFIG, {"bank": bank}, levels).scores["max"]
    threshold = float(scores.mean())
    meta = {"detector": "patchcore", "arch": "patchcore", "score": {"primary": "max"},
            "config": CONFIG, "extractor": extractor.source, "cache_size": CACHE_SIZE,
            "classes": CLASSES, "normal_class": "Normal", "threshold": threshold,
            "selection": [], "n_train_normals": 1, "params": {}, "split": "random"}
    save_detector(root / "patchcore.pt", {"bank": bank}, meta)
    return root / "patchcore.pt", threshold


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    root = tmp_path_factory.mktemp("served_anomaly")
    checkpoint = make_checkpoint(root / "model.pt")
    normal = radiograph(np.random.default_rng(0), 96, 96)
    lesioned = normal.copy()
    lesioned[4:28, 4:28] = 255   # in the dark background, away from the bright block
    files = [root / "normal.png", root / "lesioned.png"]
    for path, image in zip(files, (normal, lesioned)):
        cv2.imwrite(str(path), image)
    classifier = Classifier.from_files(checkpoint, None, "torch")
    detector, threshold = fit_patchcore(root, [classifier.decode_file(f).boxed for f in files])
    return Served(checkpoint, detector, threshold, *files)


def settings(checkpoint: Path, detector: Path | None) -> Settings:
    return Settings(checkpoint=checkpoint, reference=None, anomaly_checkpoint=detector,
                    engine="torch", limits=LIMITS)


@pytest.fixture(scope="module")
def client(served):
    c = started(create_app(settings(served.checkpoint, served.detector)))
    yield c
    c.__exit__(None, None, None)


def test_predict_adds_the_score_decision_and_map(client, served, capsys):
    normal = upload(client, served.normal.read_bytes())
    anomaly = normal.json()["anomaly"]
    assert set(anomaly) == {"score", "primary", "scores", "arch", "decision"}
    assert anomaly["arch"] == "patchcore" and anomaly["primary"] == "max"
    assert anomaly["decision"] == {"anomalous": False, "threshold": served.threshold}
    assert "anomaly_map_png" not in normal.json()

    lesioned = upload(client, served.lesioned.read_bytes(), anomaly_map="true")
    body = lesioned.json()
    assert body["anomaly"]["decision"] == {"anomalous": True, "threshold": served.threshold}
    overlay = Image.open(io.BytesIO(base64.b64decode(body["anomaly_map_png"])))
    assert overlay.size == (CACHE_SIZE, CACHE_SIZE)
    for response in (normal, lesioned):   # the service never shows a server path
        assert str(served.detector.parent) not in response.text

    # the numbers `predict --anomaly-checkpoint` writes for the same file
    assert main(["predict", str(served.lesioned), "--checkpoint", str(served.checkpoint),
                 "--anomaly-checkpoint", str(served.detector), "--engine", "torch"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["anomaly"]
    assert record["score"] == pytest.approx(body["anomaly"]["score"], rel=1e-5)
    assert record["decision"] == body["anomaly"]["decision"]


def test_batch_results_carry_the_score_and_decision(client, served):
    files = [("files", (p.name, p.read_bytes(), "image/png"))
             for p in (served.normal, served.lesioned)]
    results = client.post("/batch_predict", files=files).json()["results"]
    assert [r["anomaly"]["decision"]["anomalous"] for r in results] == [False, True]
    assert not any("anomaly_map_png" in r for r in results)


def test_health_names_the_detector(client, served):
    assert client.get("/health").json()["anomaly_detector"] == {
        "arch": "patchcore", "primary": "max", "threshold": served.threshold,
        "file": "patchcore.pt", "sha256": file_sha256(served.detector)}


def test_the_viewer_explains_the_threshold_and_keeps_the_notice(client):
    page = client.get("/").text
    assert "Research use only" in page and 'id="anomaly"' in page
    script = client.get("/static/app.js").text
    assert "anomaly_map=true" in script and "validation Youden point" in script


def test_without_a_detector_nothing_is_added(served):
    c = started(create_app(settings(served.checkpoint, None)))
    try:
        assert c.get("/health").json()["anomaly_detector"] is None
        body = upload(c, served.normal.read_bytes(), anomaly_map="true").json()
        assert "anomaly" not in body and "anomaly_map_png" not in body
    finally:
        c.__exit__(None, None, None)


def test_a_busy_detector_answers_504_at_the_deadline(client, served):
    service = client.app.state.service
    with service._anomaly_lock:   # another request holds the detector
        with pytest.raises(InputError) as refused:
            service.classify(served.normal.read_bytes(), deadline=time.monotonic() + 0.3)
    assert refused.value.status == 504 and "anomaly detector" in refused.value.detail


def test_a_missing_detector_file_is_refused_at_start_up(served, tmp_path, monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn, "run", never)
    monkeypatch.setenv("ASSUREXRAY_REFERENCE", "")   # none: only the detector is missing
    missing = tmp_path / "absent.pt"
    assert main(["serve", "--checkpoint", str(served.checkpoint), "--anomaly-checkpoint",
                 str(missing), "--params", str(REPO / "params.yaml")]) == 2
    error = capsys.readouterr().err
    assert str(missing) in error and "--anomaly-checkpoint" in error
    monkeypatch.setenv("ASSUREXRAY_ANOMALY_CHECKPOINT", str(missing))
    assert Settings.from_env().anomaly_checkpoint == missing


def test_a_detector_holding_a_pickled_object_is_refused(served, tmp_path):
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"meta": {"kind": "feature_detector"}, "state": {"bank": Path("x")}}, unsafe)
    c = TestClient(create_app(settings(served.checkpoint, unsafe)), base_url=BASE).__enter__()
    try:
        for _ in range(300):
            health = c.get("/health").json()
            if health["status"] != "loading":
                break
            time.sleep(0.05)
        assert health["status"] == "failed" and "weights-only" in health["error"]
        assert "unsafe.pt" in health["error"] and str(tmp_path) not in health["error"]
        assert upload(c, served.normal.read_bytes()).status_code == 503
    finally:
        c.__exit__(None, None, None)
