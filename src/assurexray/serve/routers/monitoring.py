"""GET /metrics (Prometheus text) and GET /drift_report (JSON, or HTML for a browser)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from assurexray.serve.deps import Authorized, get_state
from assurexray.serve.drift_html import render_drift_html
from assurexray.serve.service import Service

router = APIRouter(tags=["monitoring"], dependencies=[Authorized])


@router.get("/metrics", summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    telemetry = request.app.state.service.telemetry
    return Response(generate_latest(telemetry.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/drift_report", summary="Drift of the recent inputs against the training reference")
def drift_report(request: Request, format: str | None = Query(None, pattern="^(json|html)$"),
                 service: Service = Depends(get_state)) -> Response:
    report = service.drift()
    wants_html = format == "html" or (format is None and
                                      "text/html" in request.headers.get("accept", ""))
    if wants_html:
        return HTMLResponse(render_drift_html(report))
    return JSONResponse(report)
