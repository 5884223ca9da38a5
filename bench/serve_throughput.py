"""Throughput and latency of `assurexray serve` under 8 concurrent clients vs the raw forward.

In one run, on the same generated JPEGs and the same machine:
1. raw: the model's batched forward pass on the images already decoded and preprocessed
   (batch = serve.micro_batch), the ceiling;
2. lone: one client sending requests one after another (latency of a lone request);
3. concurrent: CLIENTS clients at once on 127.0.0.1, each sending its next request as soon as
   the previous one is answered (fixed number of requests, hard time cap).
Goals: concurrent images/s >= 0.8 x raw, and concurrent p95 <= 2 x lone p95. Writes a JSON.

    python bench/serve_throughput.py --out bench/serve_throughput.json --checkpoint models/calibrated.pt \
        --reference models/reference.npz

Timings depend on the machine and on what else runs on it: the JSON records the load average.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from assurexray.inference.classifier import Classifier
from assurexray.inference.reference import file_sha256
from assurexray.params import load_params
from assurexray.training.checkpoint import load_checkpoint
from assurexray.training.models import default_device
from predict_throughput import timed, untrained_checkpoint, write_jpegs

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--reference", type=Path)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--n", type=int, default=256, help="requests in the concurrent phase")
    parser.add_argument("--lone", type=int, default=48, help="requests in the lone phase")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--side", type=int, default=512, help="longer side of the JPEGs (px)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--time-cap", type=float, default=600.0, help="seconds, whole run")
    args = parser.parse_args()
    deadline = time.monotonic() + args.time_cap
    limits = load_params(args.params).serve
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = args.checkpoint or untrained_checkpoint(load_params(args.params), tmp / "model.pt")
        files = write_jpegs(tmp / "images", args.n, args.side)
        blobs = [f.read_bytes() for f in files]
        raw = raw_forward_rate(ckpt, files, limits.micro_batch)
        load_before = os.getloadavg()
        with server(args, ckpt, tmp / "server.log") as base:
            for blob in blobs[:8]:                              # warm-up
                post(base, blob, deadline)
            lone = [post(base, blob, deadline) for blob in blobs[:args.lone]]
            start = time.perf_counter()
            concurrent = run_clients(base, blobs, args.clients, deadline)
            wall = time.perf_counter() - start
            batches = httpx.get(base + "/metrics", timeout=30).text
    result = {
        "device": str(default_device()), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "checkpoint": str(args.checkpoint or "untrained"),
        "jpeg_side": args.side, "micro_batch": limits.micro_batch,
        "micro_batch_wait_ms": limits.micro_batch_wait_ms, "clients": args.clients,
        "raw_forward_images_per_s": raw,
        "lone": summary(lone), "concurrent": {**summary(concurrent), "requests": len(concurrent),
                                              "images_per_s": len(concurrent) / wall},
        "mean_micro_batch": mean_batch(batches)}
    result["serve_over_raw"] = result["concurrent"]["images_per_s"] / raw
    result["p95_concurrent_over_lone"] = result["concurrent"]["p95_ms"] / result["lone"]["p95_ms"]
    result["goals_met"] = {"throughput_ratio_>=_0.8": result["serve_over_raw"] >= 0.8,
                           "p95_within_2x_lone": result["p95_concurrent_over_lone"] <= 2.0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def raw_forward_rate(ckpt: Path, files: list[Path], batch: int) -> float:
    """Images/s of the batched forward pass on the preprocessed images (second of two runs)."""
    model, meta = load_checkpoint(ckpt, default_device())
    classifier = Classifier(model, meta, file_sha256(ckpt))
    tensors = torch.stack([classifier.decode_file(f).tensor for f in files])

    def forward():
        for start in range(0, len(tensors), batch):
            classifier.forward(tensors[start:start + batch])
    return len(files) / timed(forward, classifier.device)


class server:
    """`assurexray serve` as a subprocess for the duration of the block."""

    def __init__(self, args, ckpt: Path, log: Path):
        self.args, self.ckpt, self.log = args, ckpt, log

    def __enter__(self) -> str:
        a = self.args
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"), ASSUREXRAY_API_KEYS="",
                   ASSUREXRAY_REFERENCE=str(a.reference or ""))
        cmd = [sys.executable, "-m", "assurexray.cli", "serve", "--checkpoint", str(self.ckpt),
               "--params", str(a.params), "--port", str(a.port)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{a.port}"
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"server did not start:\n{self.log.read_text()[-2000:]}")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def post(base: str, blob: bytes, deadline: float, client: httpx.Client | None = None) -> float:
    """Milliseconds of one /predict round trip; any non-200 answer stops the benchmark."""
    timeout = max(1.0, deadline - time.monotonic())
    start = time.perf_counter()
    response = (client or httpx).post(base + "/predict", files={"file": ("x.jpg", blob)}, timeout=timeout)
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"/predict answered {response.status_code}: {response.text[:200]}")
    return elapsed


def run_clients(base: str, blobs: list[bytes], clients: int, deadline: float) -> list[float]:
    latencies, lock, next_index = [], threading.Lock(), iter(range(len(blobs)))

    def client_loop():
        with httpx.Client() as client:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None or time.monotonic() > deadline:
                    return
                ms = post(base, blobs[i], deadline, client)
                with lock:
                    latencies.append(ms)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def summary(latencies: list[float]) -> dict:
    values = np.asarray(latencies)
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95)),
            "mean_ms": float(values.mean())}


def mean_batch(metrics_text: str) -> float | None:
    lines = dict(line.rsplit(" ", 1) for line in metrics_text.splitlines()
                 if line.startswith("assurexray_micro_batch_size_") and "{" not in line)
    count = float(lines.get("assurexray_micro_batch_size_count", 0))
    return float(lines["assurexray_micro_batch_size_sum"]) / count if count else None


if __name__ == "__main__":
    main()
