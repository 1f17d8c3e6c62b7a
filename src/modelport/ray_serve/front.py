"""The front application's routes: what no single model's replicas can answer. No Ray import:
the model deployments are reached through `ModelLink`s (Serve handles in deployments.py).

- `GET /v2/health/ready`: ready when every model's deployment answers ready (with
  --strict-readiness, when every model also loaded);
- `POST /v2/repository/index` and `GET /v2/models/stats`: every model's rows, gathered;
- `POST /v2/repository/models/NAME/load|unload`: refused, as with `--model-control-mode none`:
  a model's replicas load it when they start;
- `/v1/models/NAME...` (TF Serving REST): passed on to NAME's deployment, since Ray's route
  prefixes cannot split `/v1/models/NAME:predict` by model;
- `GET /metrics`: every replica's metrics, merged (metrics_merge.py);
- `/v2/models/NAME/...` for a deployed model: Ray's proxy sends these to the model's own
  application, but one that reaches the front (a proxy whose routes are not updated yet) is
  passed on too;
- everything else (`/v2`, liveness, an unknown model, the dashboard): the front's own modelport,
  which loads no model, answers as `modelport serve` would.
The AccessGuard around this app checks API keys first, with the same rules as `modelport serve`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from modelport.core.errors import ModelportError, NotAllowed, public_error
from modelport.frontends.status import http_status
from modelport.ray_serve.asgi_bridge import (
    BodyTooLarge,
    ForwardedRequest,
    ForwardedResponse,
    answer_error,
    read_request,
    send_response,
)

JSON_HEADERS = [(b"content-type", b"application/json")]
CONTROL_BODY_LIMIT = 2 * 1024 * 1024


class ModelLink(Protocol):
    """One model's deployment, as the front reaches it."""

    async def forward(self, request: ForwardedRequest) -> ForwardedResponse: ...

    async def ready(self, strict: bool) -> bool: ...

    async def index_rows(self, ready_only: bool) -> list[dict[str, Any]]: ...

    async def statistics(self) -> list[dict[str, Any]]: ...


class Front:
    def __init__(
        self,
        links: Mapping[str, ModelLink],
        fallback: ASGIApp,
        metrics: Callable[[], Awaitable[bytes]],
        *,
        max_request_bytes: int,
        strict_readiness: bool,
    ) -> None:
        self._links = links
        self._fallback = fallback
        self._metrics = metrics
        self._max_request_bytes = max_request_bytes
        self._strict = strict_readiness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._fallback(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        parts = path.split("/")
        try:
            if path == "/v2/health/ready" and method == "GET":
                await self._ready(send)
            elif path == "/v2/repository/index" and method == "POST":
                await self._index(scope, receive, send)
            elif path == "/v2/models/stats" and method == "GET":
                await self._statistics(send)
            elif path == "/metrics" and method == "GET":
                body = await self._metrics()
                headers = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
                await send_response(send, ForwardedResponse(200, headers, body))
            elif _is_model_control(parts) and method == "POST":
                raise NotAllowed(
                    f"cannot {parts[5]} models on Ray Serve: each model's replicas load it when "
                    "they start; deploy the applications again to change the models"
                )
            elif (link := self._link_for(parts)) is not None:
                await self._forward(link, scope, receive, send)
            else:
                await self._fallback(scope, receive, send)
        except ModelportError as exc:
            error = public_error(exc)
            await answer_error(send, http_status(error.kind), error.message)

    def _link_for(self, parts: list[str]) -> ModelLink | None:
        """The deployment of the model a `/v2/models/NAME/...` or TF Serving path names."""
        if len(parts) >= 4 and parts[0] == "" and parts[2] == "models":
            if parts[1] == "v2":
                return self._links.get(parts[3])
            if parts[1] == "v1":
                name = parts[3].rpartition(":")[0] if len(parts) == 4 else parts[3]
                return self._links.get(name or parts[3])
        return None

    async def _forward(self, link: ModelLink, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            request = await read_request(scope, receive, self._max_request_bytes)
        except BodyTooLarge:
            await answer_error(
                send, 413, f"request body exceeds the limit of {self._max_request_bytes} bytes"
            )
            return
        await send_response(send, await link.forward(request))

    async def _ready(self, send: Send) -> None:
        answers = await asyncio.gather(
            *(link.ready(self._strict) for link in self._links.values()), return_exceptions=True
        )
        if all(answer is True for answer in answers):
            await _json(send, {"ready": True})
        else:
            await _json(send, {"ready": False, "error": "the server is not ready"}, 400)

    async def _index(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            request = await read_request(scope, receive, CONTROL_BODY_LIMIT)
        except BodyTooLarge:
            await answer_error(send, 413, "request body too large")
            return
        ready_only = False
        if request.body.strip():
            try:
                options = orjson.loads(request.body)
            except orjson.JSONDecodeError:
                await answer_error(send, 400, "the request body is not valid JSON")
                return
            if not isinstance(options, dict):
                await answer_error(send, 400, "the request body must be a JSON object")
                return
            ready_only = options.get("ready") is True
        groups = await asyncio.gather(
            *(link.index_rows(ready_only) for link in self._links.values())
        )
        rows = sorted(
            (row for group in groups for row in group),
            key=lambda row: (row["name"], _version_order(row.get("version"))),
        )
        await _json(send, rows)

    async def _statistics(self, send: Send) -> None:
        groups = await asyncio.gather(*(link.statistics() for link in self._links.values()))
        stats = sorted(
            (s for group in groups for s in group), key=lambda s: (s["name"], s["version"])
        )
        await _json(send, {"model_stats": stats})


def _is_model_control(parts: list[str]) -> bool:
    return (
        len(parts) == 6
        and parts[1:4] == ["v2", "repository", "models"]
        and parts[5] in ("load", "unload")
    )


def _version_order(version: object) -> tuple[int, str]:
    text = str(version or "")
    return (int(text), "") if text.isdigit() else (0, text)


async def _json(send: Send, content: object, status: int = 200) -> None:
    body = orjson.dumps(content)
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send_response(send, ForwardedResponse(status, headers, body))
