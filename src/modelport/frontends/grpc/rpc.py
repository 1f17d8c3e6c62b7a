"""gRPC over the HTTP/2 streams of `http2.connection`: methods, messages, deadlines, status.

Follows gRPC's PROTOCOL-HTTP2 specification: a POST to `/package.Service/Method` with
`content-type: application/grpc`, length-prefixed protobuf messages (optionally gzip/deflate
compressed, per `grpc-encoding`), `grpc-timeout` for the deadline, and the outcome as
`grpc-status` / `grpc-message` trailers. Unary and bidirectional-streaming methods are served
(the v2 service has no other kind). Errors raised as ModelportError map to status codes through
frontends/status.py, the one error table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any
from urllib.parse import quote

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from modelport.core.errors import ModelportError, public_error
from modelport.frontends.compression import decode_body
from modelport.frontends.grpc.access import CallPermit, GrpcGuard
from modelport.frontends.grpc.http2.connection import Connection
from modelport.frontends.grpc.http2.frames import STATUS_200, hpack_literal, hpack_status
from modelport.frontends.grpc.http2.headers import Headers
from modelport.frontends.status import grpc_code_name

log = logging.getLogger("modelport.grpc")


class Status(IntEnum):
    """gRPC status codes (the numbers are part of the protocol)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RpcError(Exception):
    """Ends a call with a status other than OK (for failures that are not ModelportErrors)."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


ENCODINGS = ("identity", "gzip", "deflate")
_CONTENT_TYPE = hpack_literal(b"content-type", b"application/grpc")
RESPONSE_HEADERS = STATUS_200 + _CONTENT_TYPE
TRAILERS_OK = hpack_literal(b"grpc-status", b"0")
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)
_MAX_STATUS_MESSAGE = 1024
"""Encoded grpc-message bytes at most: gRPC clients refuse headers past 8-16 KiB."""
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_HOLD_MESSAGES = 32
_HOLD_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class Method:
    request_type: type[Message]
    streaming: bool
    handler: Callable[..., Any]
    """unary: async (request, call) -> response; streaming: (requests, call) -> async iterator"""


def service_methods(servicer: object, service: ServiceDescriptor) -> dict[bytes, Method]:
    """Paths of the service's methods that `servicer` implements; the rest answer UNIMPLEMENTED."""
    table = {}
    for method in service.methods:
        handler = getattr(servicer, method.name, None)
        if handler is None:
            continue
        if method.client_streaming != method.server_streaming:
            raise TypeError(f"{method.full_name}: only unary and bidirectional methods are served")
        path = f"/{service.full_name}/{method.name}".encode()
        table[path] = Method(GetMessageClass(method.input_type), method.client_streaming, handler)
    return table


def status_block(status: Status, message: str, *, headers: bool) -> bytes:
    """Trailers with the status; `headers` makes it a Trailers-Only response (no body sent)."""
    block = RESPONSE_HEADERS if headers else b""
    block += hpack_literal(b"grpc-status", str(int(status)).encode())
    if message:
        message = message[:_MAX_STATUS_MESSAGE]
        text = quote(message, safe=_MESSAGE_SAFE)
        while len(text) > _MAX_STATUS_MESSAGE:  # shorten by characters: no escape cut in half
            message = message[: len(message) * _MAX_STATUS_MESSAGE // len(text) - 1]
            text = quote(message, safe=_MESSAGE_SAFE)
        block += hpack_literal(b"grpc-message", text.encode("ascii"))
    return block


def frame_message(body: bytes) -> bytes:
    return b"\x00" + len(body).to_bytes(4, "big") + body


def parse_timeout(value: bytes) -> float:
    """`grpc-timeout`: at most 8 digits and a unit (H M S m u n) -> seconds."""
    digits, unit = value[:-1], value[-1:]
    if not (0 < len(digits) <= 8 and digits.isdigit() and unit in _TIMEOUT_UNITS):
        shown = value.decode(errors="replace")
        raise RpcError(Status.INTERNAL, f"malformed grpc-timeout {shown!r}")
    return int(digits) * _TIMEOUT_UNITS[unit]


class Dispatcher:
    """The connection's StreamOpener: turns each new stream into a Call, or refuses it."""

    def __init__(
        self,
        methods: dict[bytes, Method],
        max_message_bytes: int,
        max_connection_bytes: int | None = None,
        guard: GrpcGuard | None = None,
    ) -> None:
        """`guard`: API keys, checked when a stream's headers arrive (None: no checks)."""
        self._methods = methods
        self._guard = guard
        self.max_message_bytes = max_message_bytes
        self.max_connection_bytes = max_connection_bytes or max(2 * max_message_bytes, 64 << 20)
        """Unfinished request bytes one connection may hold (many streams, none finished)."""

    def __call__(self, connection: Connection, stream_id: int, headers: Headers) -> Any:
        fields = dict(headers)
        if fields.get(b":method") != b"POST":
            connection.send_headers(stream_id, hpack_status(405), end_stream=True)
            return _Ignored()
        if not _is_grpc(fields.get(b"content-type", b"")):
            connection.send_headers(stream_id, hpack_status(415), end_stream=True)
            return _Ignored()
        path = fields.get(b":path", b"")
        method = self._methods.get(path)
        try:
            guard = self._guard
            permit = (
                None
                if guard is None
                else guard.permit(path, fields.get(b"authorization"), connection.peer)
            )
            if method is None:
                name = path[:200].decode(errors="replace")
                raise RpcError(Status.UNIMPLEMENTED, f"Method not found: {name}")
            encoding = fields.get(b"grpc-encoding", b"identity").decode(errors="replace")
            if encoding not in ENCODINGS:
                shown = encoding[:50]
                raise RpcError(Status.UNIMPLEMENTED, f"grpc-encoding {shown!r} is not supported")
            timeout = fields.get(b"grpc-timeout")
            seconds = parse_timeout(timeout) if timeout is not None else None
        except (RpcError, ModelportError) as exc:
            block = status_block(*_status_of(exc), headers=True) + _ACCEPT_ENCODING
            connection.send_headers(stream_id, block, end_stream=True)
            return _Ignored()
        return Call(self, connection, stream_id, method, encoding, seconds, permit)


def _is_grpc(content_type: bytes) -> bool:
    """application/grpc, optionally +format or ;parameters (PROTOCOL-HTTP2.md)."""
    rest = content_type.removeprefix(b"application/grpc")
    return rest != content_type and rest[:1] in (b"", b"+", b";")


_ACCEPT_ENCODING = hpack_literal(b"grpc-accept-encoding", ",".join(ENCODINGS).encode())


class _Ignored:
    """Events of a stream already answered at its headers."""

    def data(self, chunk: memoryview) -> None:
        pass

    def end(self) -> None:
        pass

    def reset(self) -> None:
        pass


class Call:
    """One RPC. Handlers receive it as their context (`time_remaining()`, `admit(model)`)."""

    __slots__ = (
        "_buffer",
        "_connection",
        "_counted",
        "_deadline",
        "_dispatcher",
        "_encoding",
        "_ended",
        "_finished",
        "_headers_sent",
        "_held",
        "_loop",
        "_messages",
        "_method",
        "_permit",
        "_queued_bytes",
        "_stream_id",
        "_task",
        "_timer",
        "_waiter",
    )

    def __init__(
        self,
        dispatcher: Dispatcher,
        connection: Connection,
        stream_id: int,
        method: Method,
        encoding: str,
        timeout: float | None,
        permit: CallPermit | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._permit = permit
        self._connection = connection
        self._stream_id = stream_id
        self._method = method
        self._encoding = encoding
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._messages: deque[bytes] = deque()
        self._queued_bytes = 0
        self._held = 0
        self._ended = False
        self._finished = False
        self._headers_sent = False
        self._counted = 0  # bytes of this call in connection.buffered
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._deadline = None if timeout is None else self._loop.time() + timeout
        self._timer = None if timeout is None else self._loop.call_later(timeout, self._expire)
        if method.streaming:
            self._start(self._run_stream())

    # -- what handlers see ----------------------------------------------------------------------

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - self._loop.time())

    def admit(self, model: str) -> None:
        """A streamed request for `model`: raises if this call's API key may not send it."""
        if self._permit is not None:
            self._permit.admit(model)

    # -- StreamEvents ------------------------------------------------------------------------------

    def data(self, chunk: memoryview) -> None:
        if self._finished:
            return
        buffer = self._buffer
        arrived = len(chunk)
        if buffer:  # the start of a message came before: join, then cut messages from that
            buffer += chunk
            with memoryview(buffer) as view:
                used = self._take_messages(view)
            if used is None:
                return
            del buffer[:used]
        else:  # messages are cut straight from the frame; only a partial one is kept
            used = self._take_messages(chunk)
            if used is None:
                return
            buffer += chunk[used:]
        taken = used > 0
        # Bytes of messages still arriving (and a unary call's message until it runs) count
        # against the connection's budget; a stream's complete messages are bounded by the
        # window it is given back (_release_window).
        self._count(len(buffer) + (0 if self._method.streaming else self._queued_bytes))
        if self._connection.buffered > self._dispatcher.max_connection_bytes:
            self._fail(
                Status.RESOURCE_EXHAUSTED,
                f"this connection holds more than {self._dispatcher.max_connection_bytes} bytes "
                "of requests still arriving",
            )
            return
        if not self._method.streaming:
            self._connection.consumed(self._stream_id, arrived)  # one message, bounded by limit
            if len(self._messages) > 1:
                self._fail(Status.INTERNAL, "a unary call received more than one request message")
            return
        # Streams: bytes of messages nobody has taken yet are given back to the peer's window
        # only while the queue is short, so a client that outpaces the handler gets throttled.
        self._held += arrived
        self._release_window()
        if taken and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _take_messages(self, view: memoryview) -> int | None:
        """Queue the complete messages at the start of `view` (one copy each); returns the
        bytes they used, or None when the call failed on one of them."""
        limit = self._dispatcher.max_message_bytes
        pos, end = 0, len(view)
        while end - pos >= 5:
            compressed = view[pos]
            if compressed > 1:
                self._fail(Status.INTERNAL, f"invalid compressed flag {compressed} on a message")
                return None
            size = int.from_bytes(view[pos + 1 : pos + 5], "big")
            if size > limit:
                self._fail(
                    Status.RESOURCE_EXHAUSTED,
                    f"received message larger than max ({size} vs. {limit})",
                )
                return None
            if end - pos - 5 < size:
                break
            message = bytes(view[pos + 5 : pos + 5 + size])
            if compressed:
                decompressed = self._decompress(message)
                if decompressed is None:
                    return None
                message = decompressed
            pos += 5 + size
            self._messages.append(message)
            self._queued_bytes += len(message)
        return pos

    def end(self) -> None:
        self._ended = True
        if self._finished:
            return
        if self._method.streaming:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)
            return
        if self._buffer or len(self._messages) != 1:
            self._fail(Status.INTERNAL, "a unary call needs exactly one complete request message")
            return
        self._count(0)  # the message is complete: it is the handler's now
        self._start(self._run_unary(self._messages.popleft()))

    def reset(self) -> None:
        self._close()
        if self._task is not None:
            self._task.cancel()

    # -- running -----------------------------------------------------------------------------------

    def _count(self, total: int) -> None:
        """This call's share of connection.buffered is now `total` bytes."""
        self._connection.buffered += total - self._counted
        self._counted = total

    def _start(self, work: Any) -> None:
        self._task = self._loop.create_task(work)

    async def _run_unary(self, payload: bytes) -> None:
        method = self._method
        try:
            try:
                request = method.request_type.FromString(payload)
            except DecodeError:
                raise RpcError(Status.INTERNAL, "could not parse the request message") from None
            permit = self._permit
            if permit is None:
                reply = await method.handler(request, self)
            else:
                reply = await permit.run(method.handler, request, self)
            body = frame_message(reply.SerializeToString())
        except Exception as exc:
            self._fail(*_status_of(exc))
            return
        if self._finished:
            return
        self._close()
        self._connection.respond(self._stream_id, RESPONSE_HEADERS, body, TRAILERS_OK)

    async def _run_stream(self) -> None:
        connection = self._connection
        try:
            async with contextlib.aclosing(self._method.handler(self._requests(), self)) as replies:
                async for reply in replies:
                    body = frame_message(reply.SerializeToString())
                    if self._finished:
                        return
                    if not self._headers_sent:
                        connection.send_headers(self._stream_id, RESPONSE_HEADERS)
                        self._headers_sent = True
                    connection.send_data(self._stream_id, body)
                    # the handler's next reply waits while the peer leaves its window closed
                    await connection.writable(self._stream_id)
        except Exception as exc:
            status, message = _status_of(exc)
        else:
            status, message = Status.OK, ""
        self._end(status, message)

    async def _requests(self) -> AsyncIterator[Message]:
        parse = self._method.request_type.FromString
        while True:
            while self._messages:
                message = self._messages.popleft()
                self._queued_bytes -= len(message)
                self._release_window()
                try:
                    yield parse(message)
                except DecodeError:
                    raise RpcError(Status.INTERNAL, "could not parse a request message") from None
            if self._ended or self._finished:
                return
            self._waiter = self._loop.create_future()
            await self._waiter

    def _release_window(self) -> None:
        if self._held and (
            len(self._messages) < _HOLD_MESSAGES and self._queued_bytes < _HOLD_BYTES
        ):
            self._connection.consumed(self._stream_id, self._held)
            self._held = 0

    def _decompress(self, message: bytes) -> bytes | None:
        if self._encoding == "identity":
            self._fail(Status.INTERNAL, "a compressed message arrived without grpc-encoding")
            return None
        try:
            return decode_body(message, self._encoding, self._dispatcher.max_message_bytes)
        except ModelportError as exc:
            self._fail(*_status_of(exc))
            return None

    # -- finishing ---------------------------------------------------------------------------------

    def _fail(self, status: Status, message: str) -> None:
        """End the call with an error status (once); a peer still sending is told to stop."""
        if self._finished:
            return
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._end(status, message)

    def _end(self, status: Status, message: str) -> None:
        """The status, as trailers after the response headers or as a Trailers-Only answer."""
        if self._finished:
            return
        self._close()
        if self._headers_sent:
            block = status_block(status, message, headers=False)
            self._connection.send_trailers(self._stream_id, block)
        else:
            block = status_block(status, message, headers=True)
            self._connection.send_headers(self._stream_id, block, end_stream=True)

    def _expire(self) -> None:
        self._timer = None
        self._fail(Status.DEADLINE_EXCEEDED, "Deadline Exceeded")

    def _close(self) -> None:
        self._finished = True
        self._count(0)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _status_of(exc: Exception) -> tuple[Status, str]:
    if isinstance(exc, RpcError):
        return exc.status, exc.message
    if not isinstance(exc, ModelportError):
        log.error("unexpected error in a gRPC call", exc_info=exc)
    error = public_error(exc)
    return Status[grpc_code_name(error.kind)], error.message
