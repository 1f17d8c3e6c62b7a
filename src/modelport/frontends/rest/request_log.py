"""Every HTTP request's id, access line and (for inference, when sampled) trace: the outermost
ASGI middleware, in front of the API key check, so refused requests are logged too.

`x-request-id` is the client's when it is sane, else a new random one, and goes back as a response
header on every answer. The layers beneath leave what they learn in the ASGI scope: the API key's
name (AccessGuard, `KEY_NAME`) and the handle that served an infer request (InferFastPath,
`SERVED_HANDLE`); Starlette's routes leave their `path_params`. A v2 infer or TF Serving predict
request is traced when the tracer samples it: its span covers the whole exchange, continuing the
`traceparent` header, and the encode stage ends when the response starts.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.core.tracing import CURRENT_TRACE, FrontendName, ServerTrace, Tracer
from modelport.frontends.rest.access_guard import KEY_NAME
from modelport.frontends.rest.infer_route import SERVED_HANDLE, infer_target
from modelport.observability import access_log

REQUEST_ID = b"x-request-id"
CLIENT_GONE = 499
"""The access line's status when the client left before any answer (nginx's number)."""
_V2_ROUTES = ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer")


class RequestLog:
    def __init__(self, app: ASGIApp, tracer: Tracer | None) -> None:
        self._app = app
        self._tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter_ns()
        given = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID:
                given = value
                break
        exchange = _Exchange(send, access_log.accept_request_id(given))
        trace = None if self._tracer is None else self._trace(self._tracer, scope, exchange)
        token = None if trace is None else CURRENT_TRACE.set(trace)
        try:
            await self._app(scope, receive, exchange.send)
        except BaseException:
            if exchange.status == 0:
                exchange.status = 500  # what uvicorn answers
            raise
        finally:
            if token is not None:
                CURRENT_TRACE.reset(token)
            status = exchange.status or CLIENT_GONE
            if trace is not None:
                trace.finish(status, status >= 500)
            if access_log.wanted():
                _log(scope, exchange.request_id, status, started, trace)

    def _trace(self, tracer: Tracer, scope: Scope, exchange: _Exchange) -> ServerTrace | None:
        """A trace for an inference request, if the tracer samples it."""
        method, path = scope["method"], scope["path"]
        target = _traced_route(path) if method == "POST" else None
        if target is None:
            return None
        protocol, route = target
        traceparent = tracestate = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                traceparent = value.decode("latin-1")
            elif name == b"tracestate":
                tracestate = value.decode("latin-1")
        trace = tracer.start(
            protocol,
            f"{method} {route}",
            traceparent=traceparent,
            tracestate=tracestate,
            request_id=exchange.request_id,
            attributes={
                "http.request.method": method,
                "http.route": route,
                "url.path": path,
                "url.scheme": scope.get("scheme", "http"),
                "client.address": _client(scope),
            },
        )
        exchange.trace = trace
        return trace


class _Exchange:
    """One request's answer as it goes out: its status, with the request id added."""

    __slots__ = ("_send", "request_id", "status", "trace")

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self.request_id = request_id
        self.status = 0
        self.trace: ServerTrace | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = message.get("headers", ())
            message["headers"] = [*headers, (REQUEST_ID, self.request_id.encode())]
            if self.trace is not None:
                self.trace.encoded(time.perf_counter_ns())
        await self._send(message)


def _log(
    scope: Scope, request_id: str, status: int, started: int, trace: ServerTrace | None
) -> None:
    path = scope["path"]
    handle = scope.get(SERVED_HANDLE)
    if handle is not None:  # an infer request that was routed: the version that served
        model, version = handle.name, handle.version
    else:
        params = scope.get("path_params") or {}
        model = params.get("model")
        version = params.get("version") or params.get("label")
        if model is None:  # refused before any route read it (an API key's refusal)
            target = infer_target(path)
            if target is not None:
                model, version = target
    access_log.record(
        "tfserving" if path.startswith("/v1/") else "rest",
        scope["method"],
        path,
        model,
        version,
        status,
        time.perf_counter_ns() - started,
        request_id,
        _client(scope),
        scope.get(KEY_NAME),
        None if trace is None else trace.trace_id,
    )


def _traced_route(path: str) -> tuple[FrontendName, str] | None:
    """(protocol, route template) of an inference path: v2 infer or TF Serving predict."""
    target = infer_target(path)
    if target is not None:
        return "rest", _V2_ROUTES[target[1] is not None]
    if not (path.startswith("/v1/models/") and path.endswith(":predict")):
        return None
    parts = path.split("/")
    if len(parts) == 4:
        return "tfserving", "/v1/models/{model}:predict"
    if len(parts) == 6 and parts[4] in ("versions", "labels"):
        kind = parts[4]
        return "tfserving", f"/v1/models/{{model}}/{kind}/{{{kind[:-1]}}}:predict"
    return None


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "-"
