"""The Starlette application: routes from each endpoint group, errors in the v2 shape."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from modelport.core.alerts import AlertBoard
from modelport.core.data_plane import DataPlane
from modelport.core.errors import ModelportError
from modelport.frontends.off_loop import OffLoop
from modelport.frontends.rest.access_guard import AccessGuard
from modelport.frontends.rest.alerts import alert_routes
from modelport.frontends.rest.dashboard import dashboard_routes
from modelport.frontends.rest.errors import error_answer, error_headers
from modelport.frontends.rest.infer_route import InferFastPath
from modelport.frontends.rest.request_log import RequestLog
from modelport.frontends.rest.tfserving import TFServingEndpoints
from modelport.frontends.rest.v2 import JSON, V2Endpoints, error_response
from modelport.observability.metrics import Metrics
from modelport.security.access import AccessControl

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


def create_app(
    plane: DataPlane,
    metrics: Metrics,
    *,
    max_request_bytes: int,
    lifespan: Lifespan | None = None,
    access: AccessControl | None = None,
    alerts: AlertBoard | None = None,
    off_loop: OffLoop | None = None,
) -> ASGIApp:
    """`access`: API keys, checked by AccessGuard before anything but RequestLog (every
    request's id, access line and trace) (None: no guard).
    `alerts`: what GET /v2/alerts reports (None: no such route); `off_loop`: the worker-thread
    slots for large bodies and compression (shared with the other frontends)."""
    off_loop = off_loop or OffLoop()
    v2 = V2Endpoints(plane)
    tfserving = TFServingEndpoints(plane, max_request_bytes, off_loop)

    async def render_metrics(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    routes = [
        *v2.routes(),
        *tfserving.routes(),
        *(alert_routes(alerts) if alerts is not None else ()),
        Route("/metrics", render_metrics, methods=["GET"]),
        *dashboard_routes(
            plane,
            metrics.window,
            alerts=alerts is not None,
            keys_required=lambda: access is not None and access.enabled,
        ),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan or _no_lifespan,
        exception_handlers={
            ModelportError: _error,
            HTTPException: _http_error,
            Exception: _error,
        },
    )
    fast = InferFastPath(app, plane, max_request_bytes, off_loop)
    return RequestLog(fast if access is None else AccessGuard(fast, access), plane.tracer)


@asynccontextmanager
async def _no_lifespan(app: Starlette) -> AsyncIterator[None]:
    yield


async def _error(request: Request, exc: Exception) -> Response:
    """ModelportError and unexpected exceptions alike (the infer fast path answers the same way)."""
    status, body = error_answer(exc, request.method, request.url.path)
    response = Response(body, status_code=status, media_type=JSON)
    response.raw_headers.extend(error_headers(exc))
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(f"{exc.detail}: {request.method} {request.url.path}", exc.status_code)
