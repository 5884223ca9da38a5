"""The service's front door: a pure ASGI guard that decides from the request line and headers,
before the application reads a single body byte.

In order, each refusal a short JSON ``{"detail"}`` with ``Connection: close`` (so the server
drops the connection instead of reading the rest of an unwanted body to reuse it):

1. **Host** (400): the Host header must name an allowed host, loopback names by default
   (``--allowed-host`` adds more). A DNS-rebinding page reaches a loopback service under its
   own domain name, so its requests carry that name and are refused.
2. **API key** (401): every path except the open ones (``OPEN_PATHS``: health, viewer, docs)
   needs a valid ``X-API-Key`` when keys are configured.
3. **Body limit** (413): per route (``/predict`` one file of ``max_upload_mb``,
   ``/batch_predict`` ``max_batch`` of them, anything else ``SMALL_BODY``), by Content-Length
   before reading, and counted while a chunked body streams in.
4. **Upload slots** (503 + ``Retry-After``, at once): a request to a data route holds units
   of ``upload_slots`` from its arrival until its answer is sent (the routes drop the upload's
   buffers before answering); one unit is one /predict-size upload (a /batch_predict request
   takes one per file-size of its body, all of them when chunked). When the guard answers for
   the application (413 mid-body, 504), the units stay taken until the application has let go.
5. **Deadline** (504): ``request_timeout_s`` from arrival covers the whole request: upload,
   decoding, queue, forward pass and Grad-CAM. The guard answers 504 at the deadline even when
   the application is still busy.

The guard also counts every answer it or the application gives in the service's telemetry
(endpoint, status, latency), and the body bytes read before each refusal.
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

from assurexray.serve.deps import Settings, key_is_valid
from assurexray.serve.telemetry import Telemetry

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Room for the multipart headers and boundaries around the file(s) of an upload.
MULTIPART_OVERHEAD = 64 * 1024
SMALL_BODY = MULTIPART_OVERHEAD   # the body limit of every route that takes no upload
OPEN_PATHS = frozenset({"/", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
OPEN_PREFIXES = ("/static/",)
RETRY_AFTER_S = 1


class Refusal(Exception):
    """A request the guard answers itself: status, message, extra headers."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


class UploadSlots:
    """A counting semaphore in /predict-size units, taken without waiting (the event loop is
    its only user, so no lock is needed)."""

    def __init__(self, capacity: int):
        self.capacity, self.taken = capacity, 0

    def try_take(self, units: int) -> bool:
        if self.taken + units > self.capacity:
            return False
        self.taken += units
        return True

    def give_back(self, units: int) -> None:
        self.taken -= units


class Guard:
    def __init__(self, app: ASGIApp, settings: Settings, telemetry: Telemetry):
        self.app, self.settings, self.telemetry = app, settings, telemetry
        limits = settings.limits
        self.file_bytes = int(limits.max_upload_mb * 2**20)
        # route -> the most files one request carries
        self.uploads = {"/predict": 1, "/batch_predict": limits.max_batch}
        self.slots = UploadSlots(limits.upload_slots)
        self.timeout_s = limits.request_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = _Request(scope, receive, send, time.monotonic() + self.timeout_s,
                           on_answered=lambda: self._release(request))
        try:
            self._check_headers(scope)
            request.units = self._take_slots(scope)
            await self._run(request)
        except Refusal as refusal:
            await request.refuse(refusal)
        finally:
            self._release(request)
            self._count(request)

    def _release(self, request: _Request) -> None:
        self.slots.give_back(request.units)
        request.units = 0

    def _check_headers(self, scope: Scope) -> None:
        headers = _headers(scope)
        if _host_name(headers.get("host", "")) not in self.settings.allowed_hosts:
            raise Refusal(400, "Host header not allowed: add the name with --allowed-host")
        path = scope["path"]
        keys = self.settings.api_keys
        is_open = path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)
        if keys and not is_open and not key_is_valid(headers.get("x-api-key", ""), keys):
            raise Refusal(401, "missing or wrong X-API-Key header", {"WWW-Authenticate": "X-API-Key"})
        length = headers.get("content-length", "")
        limit = self._body_limit(path)
        if length.isdigit() and int(length) > limit:
            raise Refusal(413, f"request body of {int(length)} bytes exceeds the {limit} bytes "
                               f"allowed on {path}")

    def _body_limit(self, path: str) -> int:
        files = self.uploads.get(path)
        return files * self.file_bytes + MULTIPART_OVERHEAD if files else SMALL_BODY

    def _take_slots(self, scope: Scope) -> int:
        """The upload units this request holds (0 off the data routes); 503 when full."""
        files = self.uploads.get(scope["path"])
        if not files:
            return 0
        length = _headers(scope).get("content-length", "")
        needed = math.ceil(int(length) / self.file_bytes) if length.isdigit() else files
        units = min(max(1, needed), files, self.slots.capacity)
        if not self.slots.try_take(units):
            raise Refusal(503, "server busy: every upload slot is taken, retry shortly",
                          {"Retry-After": str(RETRY_AFTER_S)})
        return units

    async def _run(self, request: _Request) -> None:
        """The application under the body limit and the deadline."""
        request.limit = self._body_limit(request.scope["path"])
        request.scope.setdefault("state", {})["deadline"] = request.deadline
        task = asyncio.ensure_future(self.app(request.scope, request.receive, request.send))
        done, _ = await asyncio.wait({task}, timeout=max(0.0, request.deadline - time.monotonic()))
        if not done:
            await request.refuse(Refusal(504, f"request not answered within "
                                              f"{self.timeout_s:g} s (request_timeout_s)"))
        try:
            await task   # after a 504 the slots stay taken until the application has let go
        except Refusal as refusal:
            await request.refuse(refusal)

    def _count(self, request: _Request) -> None:
        route = request.scope.get("route")
        path = request.scope["path"]
        endpoint = getattr(route, "path", path if path in self.uploads else "unmatched")
        status = str(request.status or 500)
        self.telemetry.requests.labels(endpoint, status).inc()
        self.telemetry.latency.labels(endpoint).observe(time.monotonic() - request.started)
        if request.refused_with is not None:
            self.telemetry.refused_body_bytes.labels(str(request.refused_with)).observe(request.read)


class _Request:
    """One request's side of the guard: what the application reads and sends through it."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, deadline: float,
                 on_answered: Callable[[], None]):
        self.scope, self._receive, self._send, self.deadline = scope, receive, send, deadline
        self._on_answered = on_answered   # the application's answer has been sent in full
        self.started = time.monotonic()
        self.units = 0                       # upload slots held
        self.limit = 0
        self.read = 0                        # body bytes handed to the application
        self.status: int | None = None       # status sent to the client
        self.refused_with: int | None = None
        self._refusal: Refusal | None = None  # raised inside the app: replaces its answer
        self._done = False                   # the client has its whole answer

    async def receive(self) -> Message:
        if self._done:
            return {"type": "http.disconnect"}
        left = self.deadline - time.monotonic()
        try:
            message = await asyncio.wait_for(self._receive(), timeout=max(0.0, left))
        except TimeoutError:
            raise self._stop(Refusal(504, "request body not received within the request "
                                          "timeout")) from None
        self.read += len(message.get("body", b""))
        if self.read > self.limit:
            raise self._stop(Refusal(413, f"request body exceeds the {self.limit} bytes allowed "
                                          f"on {self.scope['path']}"))
        return message

    def _stop(self, refusal: Refusal) -> Refusal:
        # The application may turn the exception into its own answer (FastAPI makes any error
        # while parsing a form a 400): ``send`` replaces that answer with the refusal.
        self._refusal = refusal
        return refusal

    async def send(self, message: Message) -> None:
        if self._done:
            return
        if self._refusal is not None:
            await self.refuse(self._refusal)
            return
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self._done = True
        await self._send(message)
        if self._done:
            self._on_answered()

    async def refuse(self, refusal: Refusal) -> None:
        """Answer with the refusal, unless the client already has an answer under way."""
        if self._done or self.status is not None:
            return
        self._done, self.status, self.refused_with = True, refusal.status, refusal.status
        response = JSONResponse({"detail": refusal.detail}, refusal.status,
                                headers={**refusal.headers, "Connection": "close"})
        with contextlib.suppress(OSError):   # the client may be gone already
            await response(self.scope, _nothing, self._send)


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


def _host_name(host: str) -> str:
    """'example.org' from 'example.org:8000'; '::1' from '[::1]:8000'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _nothing() -> Message:
    return {"type": "http.disconnect"}
