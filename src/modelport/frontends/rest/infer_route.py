"""`POST /v2/models/{m}[/versions/{v}]/infer` as a plain ASGI handler in front of the Starlette app.

The data-plane route skips Starlette's routing table, middleware and Request/Response objects
(a third of the CPU per small request, measured with py-spy under wrk); every other request, and
the lifespan, go to the app as before. Errors take the same `{"error": ...}` shape and statuses.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from modelport.core.data_plane import DataPlane
from modelport.core.errors import InvalidInput, PayloadTooLarge
from modelport.core.validate import InputGuard, ValidatedRequest
from modelport.frontends.compression import (
    choose_encoding,
    decode_body_off_loop,
    encode_body_off_loop,
)
from modelport.frontends.off_loop import OFF_LOOP_BYTES, OffLoop
from modelport.frontends.rest.errors import error_answer, error_headers, error_json
from modelport.frontends.rest.v2_codec import (
    OutputFormat,
    decode_request,
    encode_response,
    parse_header_length,
)

MIN_COMPRESSED_BYTES = 1024
"""Smaller responses go out uncompressed even when the client accepts gzip: no gain, only CPU."""
SERVED_HANDLE = "modelport.handle"
"""The ASGI scope's entry for the ModelHandle an infer request was routed to (the access log's
model and version)."""
_JSON = [(b"content-type", b"application/json")]
_BINARY = (b"content-type", b"application/octet-stream")


def infer_target(path: str) -> tuple[str, str | None] | None:
    """(model, version) of an infer path, else None. Segments are what Starlette's `{name}`
    would match: anything but an empty string or a slash."""
    parts = path.split("/")
    if len(parts) == 5 and parts[4] == "infer":
        model, version = parts[3], None
    elif len(parts) == 7 and parts[4] == "versions" and parts[6] == "infer" and parts[5]:
        model, version = parts[3], parts[5]
    else:
        return None
    if parts[0] or parts[1] != "v2" or parts[2] != "models" or not model:
        return None
    return model, version


class InferFastPath:
    """ASGI middleware: answers infer requests itself and passes everything else to `app`."""

    def __init__(
        self, app: ASGIApp, plane: DataPlane, max_request_bytes: int, off_loop: OffLoop
    ) -> None:
        self._app = app
        self._plane = plane
        self._limit = max_request_bytes
        self._off_loop = off_loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = infer_target(scope["path"]) if scope["type"] == "http" else None
        if target is None:
            await self._app(scope, receive, send)
        elif scope["method"] == "POST":
            await self._infer(*target, scope, receive, send)
        else:
            message = f"Method Not Allowed: {scope['method']} {scope['path']}"
            await _send(send, 405, [*_JSON, (b"allow", b"POST")], error_json(message))

    async def _infer(
        self, name: str, version: str | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            status, headers, payload = await self._answer(name, version, scope, receive)
        except ClientDisconnect:
            return
        except Exception as exc:
            status, payload = error_answer(exc, "POST", scope["path"])
            headers = [*_JSON, *error_headers(exc)]
        await _send(send, status, headers, payload)

    async def _answer(
        self, name: str, version: str | None, scope: Scope, receive: Receive
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        handle = scope[SERVED_HANDLE] = self._plane.resolve(name, version)
        fields = dict(scope["headers"])  # ASGI servers lowercase header names
        output_format = OutputFormat()

        async def decode(guard: InputGuard) -> ValidatedRequest:
            nonlocal output_format
            body = await read_body(receive, fields.get(b"content-length"), self._limit)
            body = await decode_body_off_loop(
                body, _text(fields, b"content-encoding"), self._limit, self._off_loop
            )
            header_length = parse_header_length(
                _text(fields, b"inference-header-content-length"), len(body)
            )
            args = (body, header_length, guard, name, version)
            if len(body) < OFF_LOOP_BYTES:
                request, output_format = decode_request(*args)
            else:
                request, output_format = await self._off_loop.run(decode_request, *args)
            return request

        response = await self._plane.infer(handle, decode)
        size = sum(array.nbytes for array in response.outputs.values())
        if size < OFF_LOOP_BYTES:
            payload, json_length = encode_response(response, output_format)
        else:
            payload, json_length = await self._off_loop.run(
                encode_response, response, output_format
            )
        headers = [_BINARY] if json_length is not None else list(_JSON)
        if json_length is not None:
            headers.append((b"inference-header-content-length", str(json_length).encode()))
        if len(payload) >= MIN_COMPRESSED_BYTES:
            encoding = choose_encoding(_text(fields, b"accept-encoding"))
            if encoding is not None:
                payload = await encode_body_off_loop(payload, encoding, self._off_loop)
                headers.append((b"content-encoding", encoding.encode()))
        return 200, headers, payload


async def read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """A request body from ASGI `receive`, refusing (413) anything over `limit` bytes without
    buffering it all; `declared` is the Content-Length header, if any."""
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise InvalidInput(f"Content-Length {declared.decode()!r} is not an integer") from None
        if length > limit:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], payload: bytes
) -> None:
    headers = [*headers, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _text(fields: dict[bytes, bytes], name: bytes) -> str | None:
    value = fields.get(name)
    return None if value is None else value.decode("latin-1")
