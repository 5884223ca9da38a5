"""Throughput and latency of `assurexray serve` under 8 concurrent clients vs the raw forward.

In one run, on the same generated JPEGs and the same machine:
1. raw: the model's batched forward pass on the images already decoded and preprocessed
   (batch = serve.micro_batch), the ceiling, timed two ways: one stream on torch's default
   threads, and the service's concurrent single-threaded streams (``inference.streams``);
2. lone: one client sending requests one after another (latency of a lone request);
3. concurrent: CLIENTS clients at once on 127.0.0.1, each sending its next request as soon as
   the previous one is answered (fixed number of requests, hard time cap).
Goals: concurrent images/s >= 0.8 x raw, and concurrent p95 <= 2 x lone p95. Writes a JSON.

The clients share the server's cores, so they are kept lean: a kept-alive ``http.client``
connection each, posting a multipart body built once per image (httpx clients took CPU from
the server: the previous release measured 40 images/s with them, 46-51 with these).

    python bench/serve_throughput.py --out bench/serve_throughput.json --checkpoint models/calibrated.pt \
        --reference models/reference.npz

Timings depend on the machine and on what else runs on it: the JSON records the load average.
"""
import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from assurexray.inference.classifier import Classifier
from assurexray.inference.reference import file_sha256
from assurexray.params import load_params
from assurexray.training.checkpoint import load_checkpoint
from assurexray.training.models import default_device
from predict_throughput import interleaved, raw_forward_streams, untrained_checkpoint, write_jpegs

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
        uploads = [multipart(f.read_bytes()) for f in files]
        raw = raw_forward_rates(ckpt, files, limits.micro_batch)
        load_before = os.getloadavg()
        with server(args, ckpt, tmp / "server.log") as base:
            conn = connect(base, deadline)
            for upload in uploads[:8]:                            # warm-up
                post(conn, upload)
            lone = [post(conn, upload) for upload in uploads[:args.lone]]
            start = time.perf_counter()
            concurrent = run_clients(base, uploads, args.clients, deadline)
            wall = time.perf_counter() - start
            batches = get(base, "/metrics")
    result = {
        "device": str(default_device()), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "checkpoint": str(args.checkpoint or "untrained"),
        "jpeg_side": args.side, "micro_batch": limits.micro_batch,
        "micro_batch_wait_ms": limits.micro_batch_wait_ms, "clients": args.clients,
        "raw_forward_images_per_s": raw["one_stream"],
        "raw_forward_streams_images_per_s": raw["streams"],
        "lone": summary(lone), "concurrent": {**summary(concurrent), "requests": len(concurrent),
                                              "images_per_s": len(concurrent) / wall},
        "mean_micro_batch": mean_batch(batches)}
    served = result["concurrent"]["images_per_s"]
    result["serve_over_raw"] = served / raw["one_stream"]
    result["serve_over_raw_streams"] = served / raw["streams"]
    result["p95_concurrent_over_lone"] = result["concurrent"]["p95_ms"] / result["lone"]["p95_ms"]
    result["goals_met"] = {"throughput_ratio_>=_0.8": result["serve_over_raw"] >= 0.8,
                           "throughput_ratio_streams_>=_0.8": result["serve_over_raw_streams"] >= 0.8,
                           "p95_within_2x_lone": result["p95_concurrent_over_lone"] <= 2.0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def raw_forward_rates(ckpt: Path, files: list[Path], batch: int) -> dict:
    """Images/s of the batched forward pass on the preprocessed images: one stream on torch's
    threads, and the service's single-threaded streams side by side (medians of 3 rounds)."""
    model, meta = load_checkpoint(ckpt, default_device())
    classifier = Classifier(model, meta, file_sha256(ckpt))
    tensors = torch.stack([classifier.decode_file(f).tensor for f in files])
    batches = [tensors[start:start + batch] for start in range(0, len(tensors), batch)]

    def one_stream():
        for chunk in batches:
            classifier.forward(chunk)

    seconds = interleaved({"one_stream": one_stream,
                           "streams": lambda: raw_forward_streams(classifier, batches)},
                          3, classifier.device)
    return {name: len(files) / s for name, s in seconds.items()}


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
                conn = connect(base, time.monotonic() + 2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return base
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"server did not start:\n{self.log.read_text()[-2000:]}")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def multipart(blob: bytes) -> tuple[bytes, dict]:
    """(body, headers) of a /predict upload of ``blob`` (form field ``file``)."""
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return (head + blob + f"\r\n--{boundary}--\r\n".encode(),
            {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def connect(base: str, deadline: float) -> http.client.HTTPConnection:
    host, port = base.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=max(1.0, deadline - time.monotonic()))


def get(base: str, path: str) -> str:
    conn = connect(base, time.monotonic() + 30)
    conn.request("GET", path)
    return conn.getresponse().read().decode()


def post(conn: http.client.HTTPConnection, upload: tuple[bytes, dict]) -> float:
    """Milliseconds of one /predict round trip; any non-200 answer stops the benchmark."""
    start = time.perf_counter()
    conn.request("POST", "/predict", *upload)
    response = conn.getresponse()
    body = response.read()
    elapsed = (time.perf_counter() - start) * 1000
    if response.status != 200:
        raise RuntimeError(f"/predict answered {response.status}: {body[:200]!r}")
    return elapsed


def run_clients(base: str, uploads: list[tuple[bytes, dict]], clients: int,
                deadline: float) -> list[float]:
    latencies, lock, next_index = [], threading.Lock(), iter(range(len(uploads)))

    def client_loop():
        conn = connect(base, deadline)
        while True:
            with lock:
                i = next(next_index, None)
            if i is None or time.monotonic() > deadline:
                return
            ms = post(conn, uploads[i])
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
