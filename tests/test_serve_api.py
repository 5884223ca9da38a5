"""The HTTP API through FastAPI's TestClient: every endpoint, auth, limits, DICOM, parity."""
from __future__ import annotations

import base64
import io
import json
import struct
import time
import zlib
from dataclasses import replace

import cv2
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from assurexray.cli import main
from assurexray.evaluation.bootstrap import Predictions
from assurexray.evaluation.operating_points import evaluate_operating_points
from assurexray.params import ServeParams
from assurexray.serve.app import create_app
from assurexray.serve.deps import ServeConfigError, Settings, check_bind, read_api_keys
from assurexray.training.checkpoint import load_checkpoint
from serve_helpers import REPO
from test_predict import write_mono1_dicom

CLASSES = ["Normal", "Benign", "Malignant"]
LIMITS = ServeParams(max_upload_mb=0.5, max_batch=4, drift_window=20, drift_permutations=50)
BASE = "http://localhost"   # the guard refuses TestClient's default Host, "testserver"


def settings(served, **extra) -> Settings:
    return Settings(checkpoint=served.checkpoint, reference=served.reference,
                    limits=LIMITS, **extra)


def started(app) -> TestClient:
    client = TestClient(app, base_url=BASE).__enter__()
    for _ in range(300):
        if client.get("/health").status_code == 200:
            return client
        time.sleep(0.05)
    raise AssertionError("model did not load")


@pytest.fixture(scope="module")
def client(served_model):
    c = started(create_app(settings(served_model)))
    yield c
    c.__exit__(None, None, None)


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG") if mode else \
        Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def upload(client, data: bytes, name: str = "x.png", **params):
    return client.post("/predict", files={"file": (name, data, "application/octet-stream")},
                       params=params)


def assert_clean(response, *secrets: str):
    """An error answer is short JSON: no trace, no server path."""
    body = response.text
    assert set(response.json()) == {"detail"}
    for needle in ("Traceback", "File \"", *secrets):
        assert needle not in body


def test_health_names_the_model(client, served_model):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["uptime_s"] >= 0
    model = body["model"]
    assert model["backbone"] == "mobilenetv3_small_100" and model["classes"] == CLASSES
    assert model["temperature"] == 1.5 and len(model["checkpoint_sha256"]) == 64
    assert model["git_rev"] and model["split"] == "stratified"
    point = body["operating_points"]["malignant_vs_rest"]
    assert point[point["decision"]] == served_model.malignant_point


def test_decisions_quote_test_rates_beside_validation_ones(served_model, tmp_path):
    """With the analyze stage's metrics (--test-rates), each decision carries the test rates
    measured at its threshold, labelled apart from the validation ones."""
    fitted = load_checkpoint(served_model.checkpoint)[1].operating_points
    rng = np.random.default_rng(2)
    y = rng.integers(0, len(CLASSES), 40)
    probs = rng.dirichlet(np.ones(len(CLASSES)), 40)
    test = Predictions(np.arange(40).astype(str), y, probs.argmax(1), probs, np.arange(40) // 2)
    analysis = tmp_path / "analysis.json"
    analysis.write_text(json.dumps({"ci_level": 0.95, "operating_points": evaluate_operating_points(
        fitted, test, CLASSES, 0.95)}))
    client = started(create_app(settings(served_model, test_rates=analysis)))
    try:
        decision = upload(client, served_model.images[0].read_bytes()).json()["decisions"][
            "malignant_vs_rest"]
    finally:
        client.__exit__(None, None, None)
    measured = json.loads(analysis.read_text())["operating_points"]["malignant_vs_rest"]["youden"]
    assert decision["test_rates"]["sensitivity"] == measured["test"]["sensitivity"]
    assert decision["test_rates"]["specificity"]["ci_high"] == measured["test"]["specificity"][
        "ci_high"]
    assert decision["val_sensitivity"] == measured["val"]["sensitivity"]
    assert "validation images the threshold was chosen on" in decision["rates_note"]


def test_predict_equals_the_cli(client, served_model, capsys):
    image = served_model.images[0]
    api = upload(client, image.read_bytes(), gradcam="true").json()
    assert main(["predict", str(image), "--checkpoint", str(served_model.checkpoint),
                 "--reference", str(served_model.reference)]) == 0
    cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("probs", "calibrated_probs"):
        np.testing.assert_allclose([api[key][c] for c in CLASSES], [cli[key][c] for c in CLASSES],
                                   atol=1e-5)
    assert api["pred"] == cli["pred"]
    assert api["ood"]["score"] == pytest.approx(cli["ood"]["score"], abs=1e-5)
    # the decision at the threshold calibrate fitted on the calibrated validation scale
    decision, point = api["decisions"]["malignant_vs_rest"], served_model.malignant_point
    assert decision["scale"] == "calibrated" and decision["threshold"] == point["threshold"]
    assert decision["positive"] == (api["calibrated_probs"]["Malignant"] >= point["threshold"])
    assert decision["val_sensitivity"] == point["val"]["sensitivity"]
    assert api["decisions"] == cli["decisions"]
    overlay = Image.open(io.BytesIO(base64.b64decode(api["gradcam_png"])))
    assert overlay.size == (64, 64) and api["gradcam_class"] == api["pred"]


def test_monochrome1_16bit_dicom_classifies_like_its_png(client, tmp_path, served_model):
    pixels = cv2.imread(str(served_model.images[1]), cv2.IMREAD_GRAYSCALE)
    pixels = cv2.normalize(pixels, None, 0, 255, cv2.NORM_MINMAX)
    write_mono1_dicom(tmp_path / "scan.dcm", pixels)
    dicom = upload(client, (tmp_path / "scan.dcm").read_bytes(), "scan.bin")
    plain = upload(client, png(pixels))
    assert dicom.status_code == plain.status_code == 200
    assert dicom.json()["format"] == "dicom" and plain.json()["format"] == "png"
    np.testing.assert_allclose(list(dicom.json()["probs"].values()),
                               list(plain.json()["probs"].values()), atol=1e-5)


def _bomb_png(side: int = 60000) -> bytes:
    """A PNG header claiming side x side pixels (no real pixel data needed to refuse it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_limits_and_bad_files(client, served_model, tmp_path):
    jpeg = served_model.images[0].read_bytes()
    too_big = b"\x89PNG\r\n\x1a\n" + bytes(600 * 1024)
    cases = {413: too_big, 415: b"%PDF-1.4 not an image" * 10, 422: jpeg[: len(jpeg) // 2]}
    for status, data in cases.items():
        response = upload(client, data, name=str(tmp_path / "secret.png"))
        assert response.status_code == status, response.text
        assert_clean(response, str(tmp_path), "secret.png")
    bomb = upload(client, _bomb_png())
    assert bomb.status_code == 422 and "decompression bomb" in bomb.json()["detail"]
    huge = client.post("/predict", files={"file": ("a", bytes(9 * 2**20), "image/png")})
    assert huge.status_code == 413           # refused by the body guard before parsing


@pytest.mark.parametrize("case", ["1x1", "strip", "blank_palette", "transparent_rgba", "noise16"])
def test_inputs_a_new_user_tried_are_all_flagged(client, served_model, case, tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = {
        "1x1": lambda: png(np.full((1, 1), 128, np.uint8)),
        "strip": lambda: png(rng.integers(0, 255, (10, 20000), dtype=np.uint8)),
        "blank_palette": lambda: png(np.zeros((200, 200), np.uint8), "P"),
        "transparent_rgba": lambda: png(np.dstack([rng.integers(0, 255, (200, 200, 3), dtype=np.uint8),
                                                   np.zeros((200, 200), np.uint8)]), "RGBA"),
        "noise16": lambda: png(rng.integers(0, 65535, (256, 256), dtype=np.uint16)),   # I;16
    }[case]()
    response = upload(client, data)
    body = response.json()
    assert response.status_code == 422 or body["ood"]["flagged"], body
    (tmp_path / "in.png").write_bytes(data)
    main(["predict", str(tmp_path / "in.png"), "--checkpoint", str(served_model.checkpoint),
          "--reference", str(served_model.reference)])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "rejected" in record.get("error", "") or record["ood"]["flagged"], record


def test_batch_gives_each_file_its_own_result(client, served_model):
    good = served_model.images[0].read_bytes()
    files = [("files", ("a.jpg", good, "image/jpeg")), ("files", ("b.txt", b"nope" * 40, "text/plain")),
             ("files", ("c.jpg", good, "image/jpeg"))]
    results = client.post("/batch_predict", files=files).json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert results[1]["status"] == 415 and "error" in results[1]
    # equal up to the last float bits: the micro-batch's size picks the convolution kernels
    assert results[0]["probs"] == pytest.approx(results[2]["probs"], rel=1e-9)
    too_many = client.post("/batch_predict", files=files * 2)
    assert too_many.status_code == 413


def _count(text: str, line_start: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(line_start))


def test_metrics_counters_move(client, served_model):
    before = client.get("/metrics").text
    upload(client, served_model.images[2].read_bytes())
    upload(client, b"garbage" * 20)
    after = client.get("/metrics").text
    ok = 'assurexray_requests_total{endpoint="/predict",status="200"}'
    assert _count(after, ok) == _count(before, ok) + 1
    assert _count(after, "assurexray_predictions_total") == _count(before, "assurexray_predictions_total") + 1
    rejected = 'assurexray_rejected_inputs_total{reason="unsupported_type"}'
    assert _count(after, rejected) == _count(before, rejected) + 1
    assert "assurexray_request_seconds_bucket" in after and "assurexray_out_of_distribution_total" in after


def test_drift_report_json_and_html(client, served_model):
    for image in served_model.images[:4]:
        upload(client, image.read_bytes())
    report = client.get("/drift_report").json()
    assert report["n"] >= 4 and isinstance(report["drift"], bool)
    assert {"psi", "ks", "p_value", "drift"} <= set(report["features"]["p50"])
    assert 0 < report["embedding"]["p_value"] <= 1
    html = client.get("/drift_report", headers={"Accept": "text/html"})
    assert html.headers["content-type"].startswith("text/html")
    assert "Drift report" in html.text and "Research use only" in html.text


def test_viewer_and_docs_are_served_offline(client):
    page = client.get("/").text
    assert "Research use only" in page and "/static/app.js" in page
    assert "http://" not in page and "https://" not in page          # no CDN
    assert "https://" not in client.get("/static/app.js").text
    assert client.get("/docs").status_code == 200
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_api_keys(served_model, tmp_path, monkeypatch):
    key_file = tmp_path / "keys"
    key_file.write_text("from-file\n")
    monkeypatch.setenv("ASSUREXRAY_API_KEYS", "k1, k2")
    s = Settings.from_env(checkpoint=served_model.checkpoint, reference=served_model.reference,
                          api_key_file=key_file)
    assert s.api_keys == {"k1", "k2", "from-file"}
    c = started(create_app(replace(s, limits=LIMITS)))
    try:
        image = served_model.images[0].read_bytes()
        assert c.get("/health").status_code == 200                      # open
        assert upload(c, image).status_code == 401                      # missing
        for key, status in (("k3", 401), ("k2", 200)):
            response = c.post("/predict", files={"file": ("a", image)}, headers={"X-API-Key": key})
            assert response.status_code == status
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"X-API-Key": "from-file"}).status_code == 200
    finally:
        c.__exit__(None, None, None)


def test_binding_beyond_loopback_needs_a_key_or_insecure(served_model):
    open_settings = Settings(checkpoint=served_model.checkpoint)
    check_bind("127.0.0.1", open_settings, insecure=False)
    with pytest.raises(ServeConfigError, match="without an API key"):
        check_bind("0.0.0.0", open_settings, insecure=False)
    check_bind("0.0.0.0", open_settings, insecure=True)
    check_bind("0.0.0.0", replace(open_settings, api_keys=frozenset({"k"})), insecure=False)
    assert read_api_keys(" a ,,b ", None) == {"a", "b"}
    assert not any("key" in f for f in ServeParams.__dataclass_fields__)   # never in params.yaml


def test_503_while_loading_and_when_the_queue_is_full(served_model, client, monkeypatch):
    loading = TestClient(create_app(settings(served_model)), base_url=BASE)  # lifespan not run
    assert loading.get("/health").status_code == 503
    assert upload(loading, served_model.images[0].read_bytes()).status_code == 503

    monkeypatch.setattr(client.app.state.service.batcher, "queue_size", 0)  # every slot taken
    busy = upload(client, served_model.images[0].read_bytes())
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    assert_clean(busy)


def test_drift_command_writes_the_same_report(served_model, tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    for image in served_model.images[:5]:
        (folder / image.name).write_bytes(image.read_bytes())
    assert main(["drift", str(folder), "--checkpoint", str(served_model.checkpoint),
                 "--reference", str(served_model.reference), "--out", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n"] == 5 and isinstance(report["drift"], bool)
    assert set(report["features"]) >= {"p50", "contrast", "width", "aspect", "bit_depth", "modality"}
    assert "Drift report" in (tmp_path / "r.html").read_text()


def test_served_checkpoint_is_a_dvc_model_artifact():
    artifacts = yaml.safe_load((REPO / "dvc.yaml").read_text())["artifacts"]
    assert {a["path"]: a["type"] for a in artifacts.values()} == {"models/calibrated.pt": "model"}
