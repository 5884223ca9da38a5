"""The service's guard: Host header, API key and body limits decided before the body is read,
upload slots, the whole-request deadline, and a model that failed to load.

Socket-level tests run the app on uvicorn in a thread and talk raw HTTP, so that what the
server waits for and when it answers is seen as a client sees it."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import replace

import uvicorn
from fastapi.testclient import TestClient

from assurexray.params import ServeParams, load_params
from assurexray.serve.app import create_app
from assurexray.serve.deps import Settings
from serve_helpers import REPO, free_port

KEY = "guard-key"
PART_HEAD = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
HEALTH = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
SMALL = ServeParams(max_upload_mb=0.5, max_batch=4, drift_window=20, drift_permutations=50)


def served_settings(served, limits: ServeParams = SMALL, **extra) -> Settings:
    return Settings(checkpoint=served.checkpoint, reference=served.reference, limits=limits, **extra)


@contextlib.contextmanager
def uvicorn_thread(settings: Settings):
    """The app on uvicorn at 127.0.0.1:<free port>, model loaded; yields the port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not (server.started and b" 200 " in raw(port, HEALTH, 2)[0]):
            assert time.monotonic() < deadline, "the server did not start or load the model"
            time.sleep(0.1)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def raw(port: int, data: bytes, timeout: float) -> tuple[bytes, bool]:
    """Send ``data`` on a fresh connection; (what the server answered within ``timeout``,
    whether it then closed the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        answer, closed = b"", False
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and _complete(answer):
                    closed = sock.recv(1) == b""   # EOF: the server will read no more
                    break
            else:
                closed = True
    return answer, closed


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def post_head(length: int | None, key: str | None = None, path: str = "/predict") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1",
             "Content-Type: multipart/form-data; boundary=b0undary"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if key:
        lines.append(f"X-API-Key: {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer else 0


def test_host_header_must_name_an_allowed_host(served_model):
    from assurexray.serve.deps import allowed_hosts

    app = create_app(served_settings(served_model))   # lifespan not run: routes answer anyway
    for host, expected in (("localhost:8000", 503), ("127.0.0.1", 503), ("[::1]:8000", 503),
                           ("rebind.attacker.example", 400), ("", 400)):
        answer = TestClient(app, base_url="http://localhost").get("/health", headers={"Host": host})
        assert answer.status_code == expected, host
    refused = TestClient(app, base_url="http://rebind.attacker.example").get("/health")
    assert refused.json() == {"detail": "Host header not allowed: add the name with --allowed-host"}
    assert refused.headers["connection"] == "close"
    hosts = allowed_hosts("0.0.0.0", ["XRay.lan "])
    assert hosts == {"localhost", "127.0.0.1", "::1", "xray.lan"}
    assert allowed_hosts("10.1.2.3", None) == {"localhost", "127.0.0.1", "::1", "10.1.2.3"}
    lan = create_app(served_settings(served_model, allowed_hosts=hosts))
    assert TestClient(lan, base_url="http://xray.lan:8000").get("/health").status_code == 503


def test_failed_model_load_says_why_and_never_asks_to_retry(served_model, tmp_path):
    broken = tmp_path / "secret_dir" / "calibrated.pt"
    broken.parent.mkdir()
    broken.write_bytes(b"not a checkpoint")
    app = create_app(Settings(checkpoint=broken, reference=None, limits=SMALL))
    with TestClient(app, base_url="http://localhost") as client:
        for _ in range(200):
            health = client.get("/health")
            if health.json()["status"] != "loading":
                break
            time.sleep(0.05)
        body = health.json()
        assert health.status_code == 503 and body["status"] == "failed"
        assert "calibrated.pt" in body["error"] and "secret_dir" not in body["error"]
        image = served_model.images[0].read_bytes()
        for answer in (client.post("/predict", files={"file": ("a", image)}),
                       client.get("/drift_report")):
            assert answer.status_code == 503 and "Retry-After" not in answer.headers
            assert "retry" not in answer.json()["detail"].lower()
            assert answer.json()["detail"].startswith("the model failed to load: ")


def test_unauthenticated_upload_is_refused_before_its_body(served_model):
    with uvicorn_thread(served_settings(served_model, api_keys=frozenset({KEY}))) as port:
        # 400 kB announced (within the limit), only the headers and 4 KiB sent: the answer
        # must not need the rest
        answer, closed = raw(port, post_head(400_000) + PART_HEAD + bytes(4000), timeout=5)
        assert status(answer) == 401 and closed
        answer, closed = raw(port, post_head(400_000, "wrong"), timeout=5)
        assert status(answer) == 401 and closed
        assert status(raw(port, post_head(8 * 2**20, KEY), timeout=5)[0]) == 413
        metrics = raw(port, f"GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {KEY}\r\n\r\n"
                      .encode(), 5)[0].decode()
    assert 'assurexray_refused_body_bytes_sum{status="401"} 0.0' in metrics
    assert 'assurexray_refused_body_bytes_count{status="401"} 2.0' in metrics
    assert 'assurexray_requests_total{endpoint="/predict",status="401"} 2.0' in metrics


def test_chunked_body_over_the_route_limit_gets_413(served_model):
    limit = int(SMALL.max_upload_mb * 2**20) + 64 * 1024
    body = PART_HEAD + bytes(768 * 1024)
    pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    chunks = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    with uvicorn_thread(served_settings(served_model)) as port:
        answer, closed = raw(port, post_head(None) + chunks, timeout=10)
        assert status(answer) == 413 and closed
        assert f"exceeds the {limit} bytes allowed on /predict".encode() in answer
        # /batch_predict takes max_batch files: the same body is within its limit
        answer, _ = raw(port, post_head(None, path="/batch_predict") + chunks, timeout=10)
        assert status(answer) != 413


def test_whole_request_timeout_answers_504(served_model):
    limits = replace(SMALL, request_timeout_s=1.0)
    with uvicorn_thread(served_settings(served_model, limits)) as port:
        start = time.monotonic()
        answer, closed = raw(port, post_head(100_000) + PART_HEAD + bytes(1000), timeout=20)   # then stalls
        took = time.monotonic() - start
    assert status(answer) == 504 and closed
    assert 0.9 < took < 8.0   # the deadline (1 s), with room for a loaded machine


def test_full_upload_slots_answer_503_at_once_at_the_shipped_settings(served_model):
    limits = load_params(REPO / "params.yaml").serve
    with uvicorn_thread(served_settings(served_model, limits)) as port:
        stalled = []
        try:
            for _ in range(limits.upload_slots):   # each holds one slot, mid-upload
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.sendall(post_head(100_000) + PART_HEAD + bytes(1000))
                stalled.append(sock)
            time.sleep(0.3)
            start = time.monotonic()
            answer, closed = raw(port, post_head(100_000) + PART_HEAD + bytes(1000), timeout=5)
            # at once: waiting for a slot would take until the stalled uploads time out (30 s)
            assert status(answer) == 503 and closed and time.monotonic() - start < 5
            assert b"retry-after: 1" in answer.lower()
        finally:
            for sock in stalled:
                sock.close()
        image = served_model.images[0].read_bytes()
        body = PART_HEAD + image + b"\r\n--b0undary--\r\n"
        deadline = time.monotonic() + 30
        while status(answer := raw(port, post_head(len(body)) + body, timeout=30)[0]) == 503:
            assert time.monotonic() < deadline, "the slots of closed connections were not released"
            time.sleep(0.1)
        assert status(answer) == 200
