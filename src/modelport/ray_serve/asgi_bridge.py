"""modelport's ASGI app inside a Serve replica: its lifespan, its paths, and requests passed on
from another deployment. No Ray import: these are plain ASGI pieces.

- `LoadedFirst` answers Ray's lifespan events by running modelport's lifespan and waiting for the
  initial load, so Serve counts a replica as running (and routes to it) only once its models
  are loaded; a replacement replica never answers 503 "not ready" while it loads.
- `at_full_path` undoes Ray's `root_path`: Ray mounts an application at its route prefix, while
  modelport routes on the whole path, as a request to `modelport serve` has it.
- `only_under` answers 404 outside the paths an application is reachable at, so a replica that
  Ray exposes directly (its direct-ingress port) serves no more than its route prefix does.
- `ForwardedRequest` / `call_app`: a whole HTTP exchange as plain data, for the front to pass a
  request to a model's deployment through a Serve handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.frontends.rest.errors import error_json

log = logging.getLogger("modelport.ray_serve")

Headers = list[tuple[bytes, bytes]]
LOAD_POLL_SECS = 0.05


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    method: str
    path: str
    query_string: bytes = b""
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    client: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class ForwardedResponse:
    status: int
    headers: Headers
    body: bytes


class BodyTooLarge(Exception):
    pass


async def read_request(scope: Scope, receive: Receive, limit: int) -> ForwardedRequest:
    """The request of `scope` with its whole body; BodyTooLarge past `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    client = scope.get("client")
    return ForwardedRequest(
        method=scope["method"],
        path=scope["path"],
        query_string=scope.get("query_string", b""),
        headers=[(bytes(k), bytes(v)) for k, v in scope.get("headers", ())],
        body=b"".join(chunks),
        client=(str(client[0]), int(client[1])) if client else None,
    )


async def call_app(app: ASGIApp, request: ForwardedRequest) -> ForwardedResponse:
    """Run one forwarded request through `app` in this process."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "root_path": "",
        "query_string": request.query_string,
        "headers": request.headers,
        "client": request.client,
        "server": None,
        "state": {},
    }
    delivered = False
    finished = asyncio.Event()

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    status = 500
    headers: Headers = []
    body: list[bytes] = []

    async def send(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    try:
        await app(scope, receive, send)
    finally:
        finished.set()
    return ForwardedResponse(status, headers, b"".join(body))


async def send_response(send: Send, response: ForwardedResponse) -> None:
    await send(
        {"type": "http.response.start", "status": response.status, "headers": response.headers}
    )
    await send({"type": "http.response.body", "body": response.body})


async def answer_error(send: Send, status: int, message: str) -> None:
    body = error_json(message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send_response(send, ForwardedResponse(status, headers, body))


def at_full_path(app: ASGIApp) -> ASGIApp:
    async def full_path(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("root_path"):
            scope = {**scope, "root_path": ""}
        await app(scope, receive, send)

    return full_path


def only_under(app: ASGIApp, prefixes: tuple[str, ...]) -> ASGIApp:
    """`app` for paths equal to or under one of `prefixes`, 404 elsewhere."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if not any(path == p or path.startswith(p + "/") for p in prefixes):
                await answer_error(send, 404, f"no route for {path} here")
                return
        await app(scope, receive, send)

    return guarded


class AppLifespan:
    """Drives an ASGI app's lifespan (startup, then shutdown) from outside a server."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}

        async def lifespan() -> None:
            await self._app(scope, self._to_app.get, self._from_app.put)

        self._task = asyncio.create_task(lifespan(), name="modelport-lifespan")
        await self._to_app.put({"type": "lifespan.startup"})
        reply = await self._reply()
        if reply["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"modelport did not start: {reply.get('message', reply['type'])}")

    async def stop(self) -> None:
        if self._task is None or self._task.done():
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(Exception):
            await self._reply()
        with contextlib.suppress(Exception):
            await self._task

    async def _reply(self) -> Message:
        assert self._task is not None
        getting = asyncio.ensure_future(self._from_app.get())
        await asyncio.wait({getting, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if getting.done():
            return getting.result()
        getting.cancel()
        error = self._task.exception()
        raise RuntimeError(f"modelport's lifespan ended: {error!r}")


class LoadedFirst:
    """Serve's lifespan events run `inner`'s lifespan, wait until `loaded()` holds, and run
    `also` (more start-up work) before startup completes; shutdown runs `stop_also`, then
    `inner`'s shutdown. Every other event goes to `app`."""

    def __init__(
        self,
        app: ASGIApp,
        inner: ASGIApp,
        loaded: Callable[[], bool],
        also: Callable[[], Awaitable[None]] | None = None,
        stop_also: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._app = app
        self._lifespan = AppLifespan(inner)
        self._loaded = loaded
        self._also = also
        self._stop_also = stop_also

    async def start(self) -> None:
        await self._lifespan.start()
        while not self._loaded():
            await asyncio.sleep(LOAD_POLL_SECS)
        if self._also is not None:
            await self._also()

    async def stop(self) -> None:
        if self._stop_also is not None:
            await self._stop_also()
        await self._lifespan.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self._app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    log.exception("the replica's modelport did not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
