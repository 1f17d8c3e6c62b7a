"""`GET /dashboard`: the page, its own script and style (package data, read once), and the data
endpoint the page polls. The access rules are in rest/access_guard.py: the page and its static
files are open (they hold no data), the data endpoint needs the `metrics` scope.

Every answer forbids inline script and any origin but ours (Content-Security-Policy), and
content sniffing; the page writes model-provided text as text nodes only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.core.data_plane import DataPlane
from modelport.core.errors import InvalidInput
from modelport.frontends.rest.dashboard.series import DEFAULT_STEP, MAX_STEP, series_document
from modelport.frontends.rest.v2 import JSON, error_response
from modelport.observability.window import WindowStore

PAGE_PATH = "/dashboard"
STATIC_PREFIX = "/dashboard/static/"
SERIES_PATH = "/dashboard/api/series"
STATIC_TYPES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "chart.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
"""The page's files, by name: nothing else under static/ is served."""
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_KEYS_MARK = b'data-keys="unknown"'
_SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class DashboardFiles:
    page: bytes
    static: dict[str, bytes]

    @classmethod
    def read(cls) -> DashboardFiles:
        folder = resources.files(__package__ or "modelport.frontends.rest.dashboard") / "static"
        page = (folder / "index.html").read_bytes()
        if _KEYS_MARK not in page:
            raise RuntimeError(f"the dashboard page lacks its {_KEYS_MARK!r} mark")
        return cls(page, {name: (folder / name).read_bytes() for name in STATIC_TYPES})


def dashboard_routes(
    plane: DataPlane,
    window: WindowStore | None,
    *,
    alerts: bool,
    keys_required: Callable[[], bool],
) -> list[Route]:
    """`alerts`: GET /v2/alerts exists (the page reads it); `keys_required`: API keys are
    configured now, so the page asks for one before it polls (instead of meeting a 401)."""
    files = DashboardFiles.read()
    pages = {
        required: files.page.replace(
            _KEYS_MARK, b'data-keys="required"' if required else b'data-keys="none"'
        )
        for required in (False, True)
    }

    async def page(request: Request) -> Response:
        return _answer(pages[keys_required()], "text/html; charset=utf-8", "no-cache")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        media_type = STATIC_TYPES.get(name)
        if media_type is None:
            return error_response(f"no dashboard file '{name}'", 404)
        return _answer(files.static[name], media_type, "no-cache")

    async def series(request: Request) -> Response:
        since, step = _since(request), _step(request)
        rows = await plane.repository_index()
        document = series_document(rows, window, step=step, since=since, alerts=alerts)
        return _answer(orjson.dumps(document), JSON, "no-store")

    return [
        Route(PAGE_PATH, page, methods=["GET"]),
        Route(STATIC_PREFIX + "{name}", static, methods=["GET"]),
        Route(SERIES_PATH, series, methods=["GET"]),
    ]


def _answer(body: bytes, media_type: str, cache: str) -> Response:
    response = Response(body, media_type=media_type, headers=_SECURITY_HEADERS)
    response.headers["cache-control"] = cache
    return response


def _since(request: Request) -> float | None:
    text = request.query_params.get("since")
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidInput(f"'since' must be a Unix time in seconds, not {text[:40]!r}")
    return value


def _step(request: Request) -> int:
    text = request.query_params.get("step")
    if text is None or text == "":
        return DEFAULT_STEP
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_STEP:
        raise InvalidInput(f"'step' must be whole seconds from 1 to {MAX_STEP}, not {text[:40]!r}")
    return int(text)
