"""The FastAPI application: model loaded once in ``lifespan``, routers per resource.

The model loads in a worker thread after startup, so ``/health`` answers 503 ("loading")
until it is ready instead of the port staying closed (and "failed", with the reason, if it
cannot load). Every error response is a short JSON ``{"detail"}``: no stack trace, no server
path. The pure-ASGI ``guard.Guard`` checks the Host header, the API key, the route's body limit
and an upload slot before any body byte is read, and the deadline over the whole request;
uploads under the limit stay in memory (never spooled to disk).
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser

from assurexray import NOT_FOR_CLINICAL_USE, __version__
from assurexray.serve.deps import Settings
from assurexray.serve.guard import MULTIPART_OVERHEAD, Guard
from assurexray.serve.routers import health, monitoring, predict, viewer
from assurexray.serve.service import InputError, Service

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(asyncio.to_thread(service.load))
        yield
        if not loading.done():
            await asyncio.wait([loading], timeout=60)
        service.close()

    app = FastAPI(title="AssureXRay", version=__version__, lifespan=lifespan,
                  description=f"Radiograph classification service. **{NOT_FOR_CLINICAL_USE}**")
    app.state.settings, app.state.service = settings, service
    body_limit = int(settings.limits.max_upload_mb * 2**20 * settings.limits.max_batch
                     + MULTIPART_OVERHEAD)
    # Starlette spools uploads above 1 MB to a temporary file; keep them in memory instead
    # (the body guard bounds the size). Class-wide: the setting of the last app created wins.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, body_limit)
    MultiPartParser.max_part_size = max(MultiPartParser.max_part_size, body_limit)
    for module in (health, predict, monitoring, viewer):
        app.include_router(module.router)
    viewer.mount_static(app)
    _install_handlers(app, service)
    app.add_middleware(Guard, settings=settings, telemetry=service.telemetry)
    return app


def _install_handlers(app: FastAPI, service: Service) -> None:
    @app.middleware("http")
    async def announce(request: Request, call_next):
        # A /predict request is announced to the micro-batcher as soon as its headers arrive,
        # so that batches wait for it while its body is still being read and parsed.
        # (The guard counts every request in the telemetry.)
        with service.arrival(request.url.path == "/predict") as submit:
            request.state.submit = submit
            return await call_next(request)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return JSONResponse({"detail": exc.detail}, exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        fields = sorted({".".join(map(str, e.get("loc", ()))) for e in exc.errors()})
        return JSONResponse({"detail": f"invalid request: check {', '.join(fields)}"}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__)
        return JSONResponse({"detail": "internal error"}, 500)
