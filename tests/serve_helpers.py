"""Helpers for the service tests: a tiny served model (checkpoint, training reference, operating
point) and a real `assurexray serve` subprocess."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from assurexray.data import btxrd
from assurexray.evaluation.operating_points import fit_operating_points
from assurexray.inference.classifier import Classifier
from assurexray.inference.monitoring import build_reference, summarize
from assurexray.inference.reference import file_sha256, save_reference
from assurexray.params import OodParams, ReferenceParams
from assurexray.training.checkpoint import load_checkpoint
from test_predict import CLASSES, make_checkpoint

REPO = Path(__file__).resolve().parents[1]
TEMPERATURE = 1.5


@dataclass(frozen=True)
class ServedModel:
    checkpoint: Path
    reference: Path
    malignant_point: dict    # the shipped malignant-vs-rest operating point
    images: list[Path]       # readable twin radiographs not used for the reference


def readable_images(twin: Path) -> list[Path]:
    index, _ = btxrd.ingest_btxrd_dir(twin)
    files = [Path(f) for f in index["file"] if f and Path(f).is_file() and Path(f).stat().st_size]
    return sorted(files)


def build_served_model(root: Path, twin: Path) -> ServedModel:
    """A random tiny checkpoint (with a temperature), its reference fitted on half the twin,
    and operating points fitted on made-up calibrated validation probabilities."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(CLASSES)), 60)
    points = fit_operating_points(np.arange(60) % len(CLASSES), probs, list(CLASSES), 0.9, 0.9,
                                  "youden", "calibrated")
    checkpoint = make_checkpoint(root / "calibrated.pt", temperature=TEMPERATURE,
                                 operating_points=points)
    classifier = Classifier.from_model(*load_checkpoint(checkpoint), checkpoint,
                                       file_sha256(checkpoint))
    files = readable_images(twin)
    train, val, rest = files[0::3], files[1::3], files[2::3]
    s_train = summarize(classifier, train, classifier.decode_file, 16)
    s_val = summarize(classifier, val, classifier.decode_file, 16)
    labels = np.arange(len(train)) % 3
    ref = build_reference(file_sha256(checkpoint), s_train, labels, s_val,
                          ReferenceParams(embedding_dims=8, sample_size=20), OodParams(), seed=0)
    save_reference(root / "reference.npz", ref)
    malignant = points["malignant_vs_rest"]
    return ServedModel(checkpoint, root / "reference.npz", malignant[malignant["decision"]], rest)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(served: ServedModel, log_path: Path, api_keys: str = "",
                   startup_timeout: float = 90.0):
    """`assurexray serve` on 127.0.0.1:<free port> as a subprocess; yields (base URL, process).
    Leaves it running for the caller to stop; kills it if still alive at exit."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), ASSUREXRAY_API_KEYS=api_keys,
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, "-m", "assurexray.cli", "serve", "--checkpoint", str(served.checkpoint),
           "--reference", str(served.reference),
           "--params", str(REPO / "params.yaml"), "--port", str(port)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            assert proc.poll() is None, f"server exited early:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no healthy server:\n{log_path.read_text()[-3000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


def browser():
    """Headless Debian Chromium through Selenium and chromedriver (the README's set-up)."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        raise RuntimeError("Chromium or chromedriver is missing: install them with "
                           "`apt-get install -y chromium chromium-driver` (see README)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=900,1100"):
        options.add_argument(arg)
    return webdriver.Chrome(service=DriverService(driver), options=options)


def predict_in_browser(base: str, image: Path, screenshot: Path, timeout: float = 60.0) -> dict:
    """Open the viewer, upload ``image``, wait for the bars and the overlay; return the shown
    probabilities {class: p} (from the bars' data) and save a screenshot."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser()
    try:
        driver.get(base + "/")
        driver.find_element(By.ID, "file").send_keys(str(image))
        wait = WebDriverWait(driver, timeout)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#bars .bar"))
        wait.until(lambda d: d.execute_script(
            "const o = document.getElementById('overlay'); return o.complete && o.naturalWidth > 0"))
        shown = {bar.get_attribute("data-class"): float(bar.get_attribute("data-prob"))
                 for bar in driver.find_elements(By.CSS_SELECTOR, "#bars .bar")}
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        return {"probs": shown, "kind": driver.find_element(By.ID, "bars").get_attribute("data-kind"),
                "notice": driver.find_element(By.ID, "notice").text,
                "decision": driver.find_element(By.ID, "decision").text}
    finally:
        driver.quit()
