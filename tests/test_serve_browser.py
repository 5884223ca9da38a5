"""The web viewer in a real headless Chromium: upload, bars, overlay, same numbers as the API.

Runs wherever the suite runs (CI included); without Chromium it fails and says how to install it.
"""
from __future__ import annotations

import httpx
import pytest

from serve_helpers import predict_in_browser, running_server, stop


def test_viewer_shows_the_api_prediction(served_model, tmp_path):
    image = served_model.images[3]
    with running_server(served_model, tmp_path / "server.log") as (base, proc):
        shown = predict_in_browser(base, image, tmp_path / "viewer.png")
        api = httpx.post(base + "/predict", files={"file": ("x", image.read_bytes())}, timeout=60).json()
        stop(proc)
    assert shown["kind"] == "calibrated"            # the checkpoint has a temperature
    assert shown["probs"].keys() == api["calibrated_probs"].keys()
    for name, p in api["calibrated_probs"].items():
        assert shown["probs"][name] == pytest.approx(p, abs=1e-12)
    assert "Research use only" in shown["notice"]
    # one sentence names the predicted class with its rule (argmax) and the decision with its own
    decision = api["decisions"]["malignant_vs_rest"]
    assert shown["decision"].startswith(f"Predicted class: {api['pred']} (the most probable class")
    assert f"malignant vs rest: {'POSITIVE' if decision['positive'] else 'negative'}" in shown["decision"]
    assert f"threshold {decision['threshold']:.3f}" in shown["decision"]
    assert (tmp_path / "viewer.png").stat().st_size > 1000
