"""A real `assurexray serve` subprocess: bounded concurrent load, then a clean SIGTERM stop."""
from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from serve_helpers import running_server, stop

CLIENTS, REQUESTS, TIME_CAP_S = 8, 48, 120
KEY = "load-test-key"


def test_load_then_clean_shutdown(served_model, tmp_path):
    log = tmp_path / "server.log"
    images = [p.read_bytes() for p in served_model.images[:8]]
    with running_server(served_model, log, api_keys=KEY) as (base, proc):
        deadline = time.monotonic() + TIME_CAP_S

        def one(i: int) -> tuple[int, dict]:
            remaining = max(1.0, deadline - time.monotonic())
            with httpx.Client(base_url=base, timeout=remaining) as client:
                response = client.post("/predict", headers={"X-API-Key": KEY},
                                       files={"file": ("patient_name_secret.jpg", images[i % 8])})
                return response.status_code, response.json()

        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(one, range(REQUESTS)))
        assert time.monotonic() < deadline, "load test exceeded its time cap"
        assert [status for status, _ in answers] == [200] * REQUESTS
        for _, body in answers:
            assert set(body["probs"]) == {"Normal", "Benign", "Malignant"}
            assert abs(sum(body["probs"].values()) - 1) < 1e-6 and body["pred"] in body["probs"]
            assert isinstance(body["ood"]["flagged"], bool) and "decisions" in body
        metrics = httpx.get(base + "/metrics", headers={"X-API-Key": KEY}).text
        assert f'assurexray_requests_total{{endpoint="/predict",status="200"}} {REQUESTS}.0' in metrics
        # uvicorn shuts down gracefully, then re-raises the captured SIGTERM (exit -15)
        assert stop(proc) in (0, -signal.SIGTERM)
    text = log.read_text()
    assert "Application shutdown complete" in text and "Finished server process" in text
    assert "Traceback" not in text
    assert "patient_name_secret" not in text            # logs never carry file names
