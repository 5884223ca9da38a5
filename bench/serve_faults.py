"""Load and faults on `assurexray serve` at the shipped params.yaml settings, on 127.0.0.1 only.

For ``--seconds`` (60), VALID_CLIENTS clients send valid radiographs, each its next one as soon
as the previous is answered, while HOSTILE_CLIENTS others cycle through the hostile requests
of ``hostile_requests``: oversized (Content-Length over the limit), chunked-oversized (no
Content-Length, more than the limit streamed), unauthenticated, wrong Host (DNS rebinding),
truncated JPEG, decompression bomb (a PNG header of 60000 x 60000 px) and a 16-bit 7000 x 7000
PNG (about 100 kB, 93 MiB decoded). Every request is a fresh connection with a hard timeout.

Pass (``failures``): no 5xx other than the documented 503/504; every hostile request refused
with its documented code; every valid request answered 200 with the prediction a lone request
got for the same image (probabilities within 1e-4); the server's peak RSS (VmHWM) below
``memory_bound_mib``; unauthenticated and oversized requests answered after the client sent
only the headers and OFFERED bytes, and the application handed no byte of their bodies.

    python bench/serve_faults.py --out bench/serve_faults.json \\
        --checkpoint models/calibrated.pt --reference models/reference.npz --images data/raw

tests/test_serve_faults.py runs the same load for a few seconds in the default test suite.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VALID_CLIENTS, HOSTILE_CLIENTS = 8, 4
OFFERED = 4096          # body bytes a client sends before it waits for an answer that needs none
CHUNK = 64 * 1024       # size of each chunk of a chunked upload
DOCUMENTED_5XX = {503, 504}
KEY = "fault-test-key"


@dataclass(frozen=True)
class Hostile:
    head: bytes                              # request line and headers
    body: Callable[[], Iterable[bytes]]      # what is sent after them, piece by piece
    expected: int                            # the documented refusal


@dataclass(frozen=True)
class Answer:
    status: int | None    # None: no answer within the timeout, or the connection was reset
    body: dict
    sent: int             # body bytes the client had sent when the answer came


def multipart(blob: bytes, boundary: str) -> bytes:
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + blob + f"\r\n--{boundary}--\r\n".encode()


def request_head(length: int | None, boundary: str, key: str | None, host: str = "127.0.0.1") -> bytes:
    lines = [b"POST /predict HTTP/1.1", b"Host: " + host.encode(),
             b"Content-Type: multipart/form-data; boundary=" + boundary.encode()]
    lines.append(b"Content-Length: %d" % length if length is not None
                 else b"Transfer-Encoding: chunked")
    if key:
        lines.append(b"X-API-Key: " + key.encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def upload(blob: bytes, key: str | None, host: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """(head, body) of a /predict upload of ``blob``."""
    boundary = uuid.uuid4().hex
    body = multipart(blob, boundary)
    return request_head(len(body), boundary, key, host), body


def png(width: int, height: int, bit_depth: int, rows: bool = True) -> bytes:
    """A grey PNG of zeros, compressed row by row (never held whole); ``rows=False`` gives only
    the header and a token of pixel data (a decompression bomb needs no more)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))
    ihdr = (width.to_bytes(4, "big") + height.to_bytes(4, "big")
            + bytes([bit_depth, 0, 0, 0, 0]))
    packer = zlib.compressobj(9)
    row = bytes(1 + width * bit_depth // 8)
    idat = b"".join(packer.compress(row) for _ in range(height if rows else 1)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def hostile_requests(max_upload_mb: float, jpeg: bytes, key: str) -> dict[str, Hostile]:
    limit = int(max_upload_mb * 2**20)
    big = multipart(bytes(limit + 2 * CHUNK), "b" * 32)   # over the file limit and the slack

    def chunked() -> Iterator[bytes]:
        for start in range(0, len(big), CHUNK):
            piece = big[start:start + CHUNK]
            yield b"%x\r\n" % len(piece) + piece + b"\r\n"
        yield b"0\r\n\r\n"

    def first(data: bytes) -> Callable[[], Iterable[bytes]]:
        return lambda: [data[:OFFERED]]   # the rest is never sent: the answer must not need it

    def whole(data: bytes) -> Callable[[], Iterable[bytes]]:
        return lambda: [data]

    no_key_head, no_key_body = upload(bytes(8 * 2**20), None)
    rebinding_head, rebinding_body = upload(jpeg, key, host="attacker.example:8000")
    truncated_head, truncated_body = upload(jpeg[:len(jpeg) // 2], key)
    bomb_head, bomb_body = upload(png(60_000, 60_000, 8, rows=False), key)
    deep_head, deep_body = upload(png(7000, 7000, 16), key)
    return {
        "oversized": Hostile(request_head(len(big), "b" * 32, key), first(big), 413),
        "chunked_oversized": Hostile(request_head(None, "b" * 32, key), chunked, 413),
        "unauthenticated": Hostile(no_key_head, first(no_key_body), 401),
        "wrong_host": Hostile(rebinding_head, first(rebinding_body), 400),
        "truncated": Hostile(truncated_head, whole(truncated_body), 422),
        "bomb": Hostile(bomb_head, whole(bomb_body), 422),
        "deep_16bit": Hostile(deep_head, whole(deep_body), 422),
    }


def exchange(port: int, head: bytes, body: Iterable[bytes], timeout: float) -> Answer:
    """Send ``head``, then ``body`` piece by piece until the server answers, on a fresh
    connection to 127.0.0.1; read the answer."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(head)
            for piece in body:
                if select.select([sock], [], [], 0)[0]:
                    break   # an answer (or a close) is waiting: stop sending
                sock.sendall(piece)
                sent += len(piece)
        except OSError:     # the server closed the connection while we were sending
            pass
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            return Answer(None, {}, sent)
    with contextlib.suppress(ValueError):
        return Answer(response.status, json.loads(payload), sent)
    return Answer(response.status, {}, sent)


def get_text(port: int, path: str, key: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"X-API-Key": key})
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak since start) of ``pid`` in MiB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM")}


def memory_bound_mib(limits, baseline_mib: float) -> float:
    """The most the server may hold: its peak before any load, plus each upload slot's body
    (three copies at most: the multipart buffer, the bytes read from it, parser slack) plus
    each decoding slot's pixels (about 5 x max_decoded_mb at most: Pillow's image, conversion
    copies, the 8-bit result)."""
    upload_mib = limits.max_upload_mb + 1 / 16
    return (baseline_mib + 3 * limits.upload_slots * upload_mib
            + 5 * limits.decode_slots * limits.max_decoded_mb)


def run(port: int, pid: int, limits, images: list[bytes], seconds: float, key: str = KEY,
        timeout: float = 60.0) -> dict:
    """The load (see the module doc); a report of what was sent and answered."""
    valid = [(head, [body]) for head, body in (upload(blob, key) for blob in images)]
    expected = [exchange(port, *request, timeout) for request in valid]   # lone answers
    hostile = hostile_requests(limits.max_upload_mb, images[0], key)
    before = memory_mib(pid)
    answers: list[tuple[str, Answer]] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def valid_client(offset: int) -> None:
        i = offset
        while time.monotonic() < stop_at:
            answer = exchange(port, *valid[i % len(valid)], timeout)
            with lock:
                answers.append((f"valid:{i % len(valid)}", answer))
            i += 1

    def hostile_client(offset: int) -> None:
        kinds = list(hostile)
        i = offset
        while time.monotonic() < stop_at:
            kind = kinds[i % len(kinds)]
            answer = exchange(port, hostile[kind].head, hostile[kind].body(), timeout)
            with lock:
                answers.append((kind, answer))
            i += 1

    threads = ([threading.Thread(target=valid_client, args=(i,)) for i in range(VALID_CLIENTS)]
               + [threading.Thread(target=hostile_client, args=(i,)) for i in range(HOSTILE_CLIENTS)])
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    after = memory_mib(pid)
    return report(answers, expected, hostile, limits, before, after, wall,
                  get_text(port, "/metrics", key))


def report(answers: list[tuple[str, Answer]], expected: list[Answer], hostile: dict[str, Hostile],
           limits, before: dict, after: dict, wall: float, metrics: str) -> dict:
    kinds = sorted({kind.split(":")[0] for kind, _ in answers})
    codes = {kind: dict(Counter(str(a.status) for k, a in answers if k.split(":")[0] == kind))
             for kind in kinds}
    wrong_valid = [f"{k}: {a.status} {a.body.get('detail', '')}" for k, a in answers
                   if k.startswith("valid:") and not same_prediction(a, expected[int(k.split(":")[1])])]
    wrong_hostile = [f"{k}: {a.status} {a.body.get('detail', '')}" for k, a in answers
                     if k in hostile and a.status != hostile[k].expected]
    sent = {kind: max((a.sent for k, a in answers if k == kind), default=0) for kind in hostile}
    return {
        "seconds": round(wall, 1), "requests": len(answers),
        "requests_per_kind": {kind: sum(codes[kind].values()) for kind in kinds},
        "codes": codes,
        "undocumented_5xx": sum(1 for _, a in answers if a.status and a.status >= 500
                                and a.status not in DOCUMENTED_5XX),
        "wrong_valid_answers": wrong_valid[:10], "wrong_hostile_answers": wrong_hostile[:10],
        "expected_codes": {kind: h.expected for kind, h in hostile.items()},
        "max_body_bytes_sent_before_answer": sent,
        "body_bytes_read_before_refusal": refused_bytes(metrics),
        "rss_mib": {"before_load": before["VmRSS"], "peak_before_load": before["VmHWM"],
                    "after_load": after["VmRSS"], "peak": after["VmHWM"]},
        "rss_bound_mib": round(memory_bound_mib(limits, before["VmHWM"]), 1),
        "settings": {name: getattr(limits, name) for name in (
            "max_upload_mb", "max_batch", "max_pixels", "max_decoded_mb", "upload_slots",
            "decode_slots", "queue_size", "request_timeout_s")},
        "load_average": os.getloadavg(),
    }


def same_prediction(answer: Answer, lone: Answer) -> bool:
    if answer.status != 200 or lone.status != 200 or answer.body["pred"] != lone.body["pred"]:
        return False
    return all(abs(answer.body["probs"][c] - p) <= 1e-4 for c, p in lone.body["probs"].items())


def refused_bytes(metrics: str) -> dict[str, dict[str, float]]:
    """{status: {"count", "sum", "max_bucket"}} of assurexray_refused_body_bytes: how many
    refusals, the body bytes the application was handed before them, and the smallest
    histogram bucket holding every one of them."""
    out: dict[str, dict[str, float]] = {}
    for line in metrics.splitlines():
        if not line.startswith("assurexray_refused_body_bytes"):
            continue
        name, value = line.rsplit(" ", 1)
        labels = dict(item.split("=") for item in name[name.index("{") + 1:-1].split(","))
        entry = out.setdefault(labels['status'].strip('"'), {})
        if name.startswith("assurexray_refused_body_bytes_bucket"):
            entry.setdefault("buckets", []).append((float(labels["le"].strip('"')), float(value)))
        elif name.startswith("assurexray_refused_body_bytes_sum"):
            entry["sum"] = float(value)
        elif name.startswith("assurexray_refused_body_bytes_count"):
            entry["count"] = float(value)
    for entry in out.values():
        buckets = sorted(entry.pop("buckets", []))
        entry["max_bucket"] = next((le for le, n in buckets if n >= entry.get("count", 0)), None)
    return out


def failures(result: dict) -> list[str]:
    """What broke a promise; empty when the run passes."""
    found = []
    if result["undocumented_5xx"]:
        found.append(f"{result['undocumented_5xx']} answers 5xx other than 503/504")
    if result["wrong_valid_answers"]:
        found.append(f"valid requests answered wrongly: {result['wrong_valid_answers']}")
    if result["wrong_hostile_answers"]:
        found.append(f"hostile requests not refused as documented: {result['wrong_hostile_answers']}")
    missing = set(result["expected_codes"]) - set(result["codes"])
    if missing:
        found.append(f"hostile kinds never sent: {sorted(missing)}")
    rss = result["rss_mib"]["peak"]
    if rss > result["rss_bound_mib"]:
        found.append(f"peak RSS {rss:.0f} MiB above the bound {result['rss_bound_mib']} MiB")
    for kind in ("unauthenticated", "oversized", "wrong_host"):
        if result["max_body_bytes_sent_before_answer"].get(kind, 0) > OFFERED:
            found.append(f"{kind}: the server waited for more than {OFFERED} body bytes")
    for status in ("400", "401"):
        read = result["body_bytes_read_before_refusal"].get(status, {}).get("sum", 0)
        if read:
            found.append(f"{status} refusals were handed {read:.0f} body bytes")
    return found


def main() -> None:
    from assurexray.params import load_params

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "models/calibrated.pt",
                        help="missing: an untrained checkpoint of params.yaml's backbone")
    parser.add_argument("--reference", type=Path, default=REPO / "models/reference.npz",
                        help="missing: none (no out-of-distribution check)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--images", type=Path, default=REPO / "data/raw",
                        help="folder searched for the valid radiographs (JPEG)")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    images = [p.read_bytes() for p in sorted(args.images.rglob("*.jp*g"))[:16]]
    if not images:
        raise SystemExit(f"{args.images}: no JPEG found for the valid requests")
    params = load_params(args.params)
    with tempfile.TemporaryDirectory() as tmp:
        model = "pipeline"
        if not args.checkpoint.is_file():
            from predict_throughput import untrained_checkpoint

            args.checkpoint = untrained_checkpoint(params, Path(tmp) / "model.pt")
            model = f"untrained {params.model.backbone} ({args.checkpoint.stat().st_size / 2**20:.0f} MiB)"
        with serving(args, Path(tmp) / "server.log") as (port, proc):
            result = run(port, proc.pid, params.serve, images, args.seconds)
        result["server_log_tracebacks"] = (Path(tmp) / "server.log").read_text().count("Traceback")
        result["model"] = model
    result["failures"] = failures(result)
    result["command"] = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    raise SystemExit(1 if result["failures"] else 0)


@contextlib.contextmanager
def serving(args, log: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """`assurexray serve` on 127.0.0.1 (a free port) with the API key KEY, until the block ends."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), ASSUREXRAY_API_KEYS=KEY)
    cmd = [sys.executable, "-m", "assurexray.cli", "serve", "--checkpoint", str(args.checkpoint),
           "--params", str(args.params), "--port", str(port)]
    env["ASSUREXRAY_REFERENCE"] = str(args.reference) if args.reference.is_file() else ""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while '"status":"ok"' not in _health(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _health(port: int) -> str:
    with contextlib.suppress(OSError):
        return get_text(port, "/health", "")
    return ""


if __name__ == "__main__":
    main()
