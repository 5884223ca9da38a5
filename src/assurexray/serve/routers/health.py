"""GET /health: open to everyone (no key), 503 while the model loads."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/health", summary="Status, model identity and uptime")
def health(request: Request) -> JSONResponse:
    service = request.app.state.service
    return JSONResponse(service.health(), 200 if service.ready else 503)
