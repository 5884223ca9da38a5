"""Throughput and latency of `assurexray serve` under 8 concurrent clients vs the raw forward.

In one run, on the same generated JPEGs and the same machine:
1. raw: each inference engine's (onnxruntime, torch) batched forward pass on the images already
   decoded and preprocessed (batch = serve.micro_batch), the ceiling, timed two ways: one
   stream, and the service's concurrent single-threaded streams; alternated, medians of 3;
2. lone: one client sending requests one after another (latency of a lone request);
3. concurrent: CLIENTS clients at once on 127.0.0.1, each sending its next request as soon as
   the previous one is answered (fixed number of requests, hard time cap).
Phases 2 and 3 run against a server on each engine in turn (``inference.engine`` set in a copy
of --params). Writes a JSON with one section per engine.

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
import yaml

from assurexray.inference.classifier import Classifier
from assurexray.inference.engines import onnx_path
from assurexray.inference.export import export_onnx
from assurexray.inference.onnx_engine import OnnxEngine
from assurexray.inference.reference import file_sha256
from assurexray.inference.torch_engine import TorchEngine
from assurexray.params import load_params
from assurexray.training.checkpoint import load_checkpoint
from predict_throughput import (
    ENGINES,
    interleaved,
    raw_forward_streams,
    untrained_checkpoint,
    write_jpegs,
)

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
        graph = onnx_path(ckpt)
        if not graph.is_file():   # the service finds the graph beside the checkpoint
            export_onnx(*load_checkpoint(ckpt, "cpu"), file_sha256(ckpt), graph)
        raw = raw_forward_rates(ckpt, files, limits.micro_batch)
        load_before = os.getloadavg()
        served = {}
        for engine in ENGINES:   # one after the other, with the same clients and images
            served[engine] = serve_phases(args, ckpt, engine_params(args.params, engine, tmp),
                                          uploads, tmp, deadline)
    result = {
        "cpu_count": os.cpu_count(), "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "checkpoint": str(args.checkpoint or "untrained"),
        "jpeg_side": args.side, "micro_batch": limits.micro_batch,
        "micro_batch_wait_ms": limits.micro_batch_wait_ms, "clients": args.clients}
    for engine, phases in served.items():
        rate = phases["concurrent"]["images_per_s"]
        result[engine] = {"raw_forward_images_per_s": raw[f"{engine}_one_stream"],
                          "raw_forward_streams_images_per_s": raw[f"{engine}_streams"], **phases,
                          "serve_over_raw": rate / raw[f"{engine}_one_stream"],
                          "serve_over_raw_streams": rate / raw[f"{engine}_streams"],
                          "p95_concurrent_over_lone": (phases["concurrent"]["p95_ms"]
                                                       / phases["lone"]["p95_ms"])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def serve_phases(args, ckpt: Path, params: Path, uploads: list, tmp: Path,
                 deadline: float) -> dict:
    """The lone and concurrent phases against a server started with ``params``."""
    with server(args, ckpt, params, tmp / "server.log") as base:
        conn = connect(base, deadline)
        for upload in uploads[:8]:                            # warm-up
            post(conn, upload)
        lone = [post(conn, upload) for upload in uploads[:args.lone]]
        start = time.perf_counter()
        concurrent = run_clients(base, uploads, args.clients, deadline)
        wall = time.perf_counter() - start
        batches = get(base, "/metrics")
    return {"lone": summary(lone),
            "concurrent": {**summary(concurrent), "requests": len(concurrent),
                           "images_per_s": len(concurrent) / wall},
            "mean_micro_batch": mean_batch(batches)}


def engine_params(params: Path, engine: str, tmp: Path) -> Path:
    """A copy of ``params`` with inference.engine set to ``engine``."""
    raw = yaml.safe_load(params.read_text())
    raw.setdefault("inference", {})["engine"] = engine
    path = tmp / f"params_{engine}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def raw_forward_rates(ckpt: Path, files: list[Path], batch: int) -> dict:
    """Images/s of each engine's batched forward pass on the preprocessed images: one stream,
    and the service's single-threaded streams side by side (alternated, medians of 3 rounds)."""
    model, meta = load_checkpoint(ckpt, "cpu")
    sha = file_sha256(ckpt)
    engines = {"onnxruntime": OnnxEngine.load(onnx_path(ckpt), sha),
               "torch": TorchEngine(model, meta)}
    classifier = Classifier(engines["torch"], ckpt, sha)
    pixels = np.stack([classifier.decode_file(f).pixels for f in files])
    batches = [pixels[start:start + batch] for start in range(0, len(pixels), batch)]
    fns = {}
    for name, engine in engines.items():
        fns[f"{name}_one_stream"] = lambda e=engine: [e.forward(chunk) for chunk in batches]
        fns[f"{name}_streams"] = lambda e=engine: raw_forward_streams(e, batches)
    seconds = interleaved(fns, 3)
    return {name: len(files) / s for name, s in seconds.items()}


class server:
    """`assurexray serve` as a subprocess for the duration of the block."""

    def __init__(self, args, ckpt: Path, params: Path, log: Path):
        self.args, self.ckpt, self.params, self.log = args, ckpt, params, log

    def __enter__(self) -> str:
        a = self.args
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"), ASSUREXRAY_API_KEYS="",
                   ASSUREXRAY_REFERENCE=str(a.reference or ""))
        cmd = [sys.executable, "-m", "assurexray.cli", "serve", "--checkpoint", str(self.ckpt),
               "--params", str(self.params), "--port", str(a.port)]
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
