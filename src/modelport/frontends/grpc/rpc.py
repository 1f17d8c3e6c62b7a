"""gRPC over the HTTP/2 streams of `http2.connection`: methods, messages, deadlines, status.

Follows gRPC's PROTOCOL-HTTP2 specification: a POST to `/package.Service/Method` with
`content-type: application/grpc`, length-prefixed protobuf messages (optionally gzip/deflate
compressed, per `grpc-encoding`), `grpc-timeout` for the deadline, and the outcome as
`grpc-status` / `grpc-message` trailers. Unary and bidirectional-streaming methods are served
(the v2 service has no other kind). Errors raised as ModelportError map to status codes through
frontends/status.py, the one error table. Every call gets a request id (`x-request-id` metadata,
sent back in the response headers), one access line when it ends (a stream: one for the whole
stream) and, for ModelInfer and ModelStreamInfer when sampled, a trace continuing `traceparent`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any
from urllib.parse import quote

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from modelport.core.errors import ModelportError, RateLimited, public_error
from modelport.core.tracing import CURRENT_TRACE, ServerTrace, Tracer
from modelport.frontends.budgets import ByteBudget
from modelport.frontends.compression import decode_body_off_loop
from modelport.frontends.grpc.access import CallPermit, GrpcGuard
from modelport.frontends.grpc.http2.connection import Connection
from modelport.frontends.grpc.http2.frames import STATUS_200, hpack_literal, hpack_status
from modelport.frontends.grpc.http2.header_rules import Headers
from modelport.frontends.off_loop import OffLoop
from modelport.frontends.status import grpc_code_name
from modelport.observability import access_log

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
_MESSAGE_RATE = 1 << 20
"""Bytes per second a request message must arrive at, beyond its stall_timeout, to finish in
time: a 64 MiB message gets 64 s more."""
_NO_ROOM = (
    "answers waiting for this client's flow-control window already fill this connection's "
    "or the server's budget"
)
_TRACED_METHODS = frozenset({"ModelInfer", "ModelStreamInfer"})
_MODEL_FIELDS = ("model_name", "name")
_VERSION_FIELDS = ("model_version", "version")
_FAILED = frozenset({2, 4, 12, 13, 14, 15})
"""Codes that mark a server span failed (OpenTelemetry's gRPC conventions)."""


@dataclass(frozen=True, slots=True)
class Method:
    request_type: type[Message]
    streaming: bool
    handler: Callable[..., Any]
    """unary: async (request, call) -> response; streaming: (requests, call) -> async iterator"""
    model_field: str | None = None
    """The request's field naming the model (the access log's), and its version's."""
    version_field: str | None = None
    traced: bool = False
    """An inference method: traced when the tracer samples the call."""
    path: str = ""


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
        fields = method.input_type.fields_by_name
        table[path] = Method(
            GetMessageClass(method.input_type),
            method.client_streaming,
            handler,
            next((name for name in _MODEL_FIELDS if name in fields), None),
            next((name for name in _VERSION_FIELDS if name in fields), None),
            method.name in _TRACED_METHODS,
            path.decode(),
        )
    return table


def status_block(status: Status, message: str, extra: bytes = b"", *, headers: bool) -> bytes:
    """Trailers with the status (and `extra` encoded fields); `headers` makes it a
    Trailers-Only response (no body sent)."""
    block = RESPONSE_HEADERS if headers else b""
    block += hpack_literal(b"grpc-status", str(int(status)).encode())
    if message:
        message = message[:_MAX_STATUS_MESSAGE]
        text = quote(message, safe=_MESSAGE_SAFE)
        while len(text) > _MAX_STATUS_MESSAGE:  # shorten by characters: no escape cut in half
            message = message[: len(message) * _MAX_STATUS_MESSAGE // len(text) - 1]
            text = quote(message, safe=_MESSAGE_SAFE)
        block += hpack_literal(b"grpc-message", text.encode("ascii"))
    return block + extra


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
        tracer: Tracer | None = None,
        pending: ByteBudget | None = None,
        stall_timeout: float = 10.0,
        off_loop: OffLoop | None = None,
    ) -> None:
        """`guard`: API keys, checked when a stream's headers arrive (None: no checks);
        `tracer`: traces sampled inference calls (None: no tracing); `pending`: bytes of
        requests still arriving over the whole server (shared with the HTTP port);
        `stall_timeout`: how long a request message may stall half sent; `off_loop`: where
        large compressed messages are inflated."""
        self._methods = methods
        self._guard = guard
        self._tracer = tracer
        self.max_message_bytes = max_message_bytes
        self.max_connection_bytes = max_connection_bytes or max(2 * max_message_bytes, 64 << 20)
        """Unfinished request bytes one connection may hold (many streams, none finished)."""
        self.pending = pending or ByteBudget(1 << 62)
        self.stall_timeout = stall_timeout
        self.off_loop = off_loop or OffLoop()

    def __call__(self, connection: Connection, stream_id: int, headers: Headers) -> Any:
        started = time.perf_counter_ns()
        fields = dict(headers)
        if fields.get(b":method") != b"POST":
            connection.send_headers(stream_id, hpack_status(405), end_stream=True)
            return _Ignored()
        if not _is_grpc(fields.get(b"content-type", b"")):
            connection.send_headers(stream_id, hpack_status(415), end_stream=True)
            return _Ignored()
        path = fields.get(b":path", b"")
        method = self._methods.get(path)
        request_id = access_log.accept_request_id(fields.get(b"x-request-id"))
        permit = None
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
            status, message, extra = _status_of(exc)
            extra += _request_id_field(request_id)
            block = status_block(status, message, extra, headers=True)
            connection.send_headers(stream_id, block + _ACCEPT_ENCODING, end_stream=True)
            if access_log.wanted():
                key = None if permit is None else permit.key_name
                name = path[:200].decode(errors="replace")
                _log_call(name, "", "", status, started, request_id, connection.peer, key)
            return _Ignored()
        trace = None
        if self._tracer is not None and method.traced:
            trace = _start_trace(self._tracer, path, fields, request_id, connection.peer)
        call = Call(self, connection, stream_id, method, encoding, seconds, permit)
        call.observe(request_id, started, trace)
        return call


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
        "_arrived",
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
        "_model",
        "_parsed",
        "_permit",
        "_queued_bytes",
        "_request_id",
        "_stall",
        "_started",
        "_stream_id",
        "_task",
        "_timer",
        "_trace",
        "_version",
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
        self._request_id = ""
        self._started = 0
        self._trace: ServerTrace | None = None
        self._model = self._version = ""
        self._parsed = 0  # request messages taken by the handler
        self._arrived = 0  # request messages complete
        self._stall: asyncio.TimerHandle | None = None  # a request message half arrived
        if method.streaming:
            self._start(self._run_stream())

    def observe(self, request_id: str, started_ns: int, trace: ServerTrace | None) -> None:
        """The call's request id, when its headers arrived, and its trace if sampled."""
        self._request_id = request_id
        self._started = started_ns
        self._trace = trace

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
        grew = self._count(len(buffer) + (0 if self._method.streaming else self._queued_bytes))
        if grew > 0 and self._over_budget():
            return
        if buffer and self._stall is None:
            self._watch_message()
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
            if compressed:  # inflated when the handler takes it, off the loop if large
                if self._encoding == "identity":
                    self._fail(
                        Status.INTERNAL, "a compressed message arrived without grpc-encoding"
                    )
                    return None
                message: bytes = _Compressed(view[pos + 5 : pos + 5 + size])
            else:
                message = bytes(view[pos + 5 : pos + 5 + size])
            pos += 5 + size
            self._arrived += 1
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
        finished = self._finished
        self._close()
        self._cancel_task()
        if not finished:
            self._done(Status.CANCELLED)

    # -- running -----------------------------------------------------------------------------------

    def _count(self, total: int) -> int:
        """This call's share of connection.buffered (and of the server's pending bytes) is now
        `total` bytes; returns the change."""
        change = total - self._counted
        if change:
            self._connection.buffered += change
            self._dispatcher.pending.held += change
            self._counted = total
        return change

    def _over_budget(self) -> bool:
        """After this call's bytes grew: whether its connection or the server now holds more
        request bytes still arriving than allowed (the call then failed)."""
        dispatcher = self._dispatcher
        if self._connection.buffered > dispatcher.max_connection_bytes:
            self._connection.refused("connection_bytes")
            self._fail(
                Status.RESOURCE_EXHAUSTED,
                f"this connection holds more than {dispatcher.max_connection_bytes} bytes "
                "of requests still arriving",
            )
            return True
        pending = dispatcher.pending
        if pending.held > pending.limit:
            self._connection.refused("pending_bytes")
            self._fail(
                Status.UNAVAILABLE,
                f"the server holds more than {pending.limit} bytes of requests "
                "still arriving; try again",
            )
            return True
        return False

    def _watch_message(self) -> None:
        """A message has begun to arrive: it must be complete within stall_timeout, plus a
        second per MiB it declares."""
        buffer = self._buffer
        declared = int.from_bytes(buffer[1:5], "big") if len(buffer) >= 5 else 0
        allowed = self._dispatcher.stall_timeout + declared / _MESSAGE_RATE
        self._stall = self._loop.call_later(allowed, self._stalled, self._arrived, allowed)

    def _stalled(self, arrived: int, allowed: float) -> None:
        self._stall = None
        if not self._buffer or self._finished:
            return
        if self._arrived != arrived:  # that message came; the one arriving now is the next
            self._watch_message()
            return
        self._connection.refused("message_stall")
        self._fail(
            Status.DEADLINE_EXCEEDED,
            f"a request message stalled: {len(self._buffer)} bytes arrived in {allowed:g} s",
        )

    def _start(self, work: Any) -> None:
        self._task = self._loop.create_task(work)

    def _cancel_task(self) -> None:
        """Cancel the handler's task and let go of it: the task keeps its cancellation's
        traceback, whose frames hold this call, so keeping the task would make a cycle that
        only a full garbage collection frees (a reset flood would pile them up)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def _run_unary(self, payload: bytes) -> None:
        method = self._method
        try:
            try:
                if type(payload) is _Compressed:  # the test inline: no coroutine per call
                    payload = await self._inflated(payload)
                request = method.request_type.FromString(payload)
            except DecodeError:
                raise RpcError(Status.INTERNAL, "could not parse the request message") from None
            noting = access_log.wanted()  # model and version are read for its line only
            if noting:
                self._note_request(request)
            trace = self._trace
            if trace is not None:
                CURRENT_TRACE.set(trace)  # this task's own context: the data plane reads it
            permit = self._permit
            if permit is None:
                reply = await method.handler(request, self)
            else:
                reply = await permit.run(method.handler, request, self)
            if noting:
                self._version = getattr(reply, "model_version", None) or self._version
            body = frame_message(reply.SerializeToString())
            if trace is not None:
                trace.encoded(time.perf_counter_ns())
        except Exception as exc:
            self._fail(*_status_of(exc))
            return
        finally:
            self._task = None  # done: see _cancel_task
        if self._finished:
            return
        headers = RESPONSE_HEADERS + _request_id_field(self._request_id)
        if not self._connection.respond(self._stream_id, headers, body, TRAILERS_OK):
            self._end(Status.RESOURCE_EXHAUSTED, _NO_ROOM)
            return
        self._close()
        self._done(Status.OK)

    async def _run_stream(self) -> None:
        connection = self._connection
        if self._trace is not None:
            CURRENT_TRACE.set(self._trace)  # the stream's requests run in tasks that inherit it
        try:
            async with contextlib.aclosing(self._method.handler(self._requests(), self)) as replies:
                async for reply in replies:
                    body = frame_message(reply.SerializeToString())
                    if self._finished:
                        return
                    if not self._headers_sent:
                        headers = RESPONSE_HEADERS + _request_id_field(self._request_id)
                        connection.send_headers(self._stream_id, headers)
                        self._headers_sent = True
                        answer = getattr(reply, "infer_response", None)
                        if not self._version and answer is not None:
                            self._version = answer.model_version
                    if not connection.send_data(self._stream_id, body):
                        raise RpcError(Status.RESOURCE_EXHAUSTED, _NO_ROOM)
                    # the handler's next reply waits while the peer leaves its window closed
                    await connection.writable(self._stream_id)
        except Exception as exc:
            status, message, extra = _status_of(exc)
        else:
            status, message, extra = Status.OK, "", b""
        finally:
            self._task = None  # done: see _cancel_task
        self._end(status, message, extra)

    async def _requests(self) -> AsyncIterator[Message]:
        parse = self._method.request_type.FromString
        while True:
            while self._messages:
                message = self._messages.popleft()
                self._queued_bytes -= len(message)
                self._release_window()
                self._connection.delivered()
                message = await self._inflated(message)
                try:
                    request = parse(message)
                except DecodeError:
                    raise RpcError(Status.INTERNAL, "could not parse a request message") from None
                if not self._parsed and access_log.wanted():
                    self._note_request(request)
                self._parsed += 1
                yield request
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

    async def _inflated(self, message: bytes) -> bytes:
        """The message as the handler needs it: inflated (bounded by the message limit) if it
        came compressed; in a worker thread when it is large (frontends/compression.py)."""
        if type(message) is not _Compressed:
            return message
        dispatcher = self._dispatcher
        return await decode_body_off_loop(
            message, self._encoding, dispatcher.max_message_bytes, dispatcher.off_loop
        )

    # -- finishing ---------------------------------------------------------------------------------

    def _fail(self, status: Status, message: str, extra: bytes = b"") -> None:
        """End the call with an error status (once); a peer still sending is told to stop."""
        if self._finished:
            return
        if self._task is not asyncio.current_task():
            self._cancel_task()
        self._end(status, message, extra)

    def _end(self, status: Status, message: str, extra: bytes = b"") -> None:
        """The status, as trailers after the response headers or as a Trailers-Only answer."""
        if self._finished:
            return
        self._close()
        if self._headers_sent:
            block = status_block(status, message, extra, headers=False)
            self._connection.send_trailers(self._stream_id, block)
        else:
            extra += _request_id_field(self._request_id)
            block = status_block(status, message, extra, headers=True)
            self._connection.send_headers(self._stream_id, block, end_stream=True)
        self._done(status)

    def _note_request(self, request: Message) -> None:
        """The model and version a request names (a stream's first), for the access log."""
        method = self._method
        if method.model_field is not None:
            self._model = getattr(request, method.model_field)
        if method.version_field is not None:
            self._version = getattr(request, method.version_field)

    def _done(self, status: Status) -> None:
        """The call has ended with `status`: its trace and its access line."""
        trace = self._trace
        if trace is not None:
            trace.finish(int(status), status in _FAILED)
        if access_log.wanted():
            permit = self._permit
            _log_call(
                self._method.path,
                self._model,
                self._version,
                status,
                self._started,
                self._request_id,
                self._connection.peer,
                None if permit is None else permit.key_name,
                None if trace is None else trace.trace_id,
                self._parsed if self._method.streaming else None,
            )

    def _expire(self) -> None:
        self._timer = None
        self._fail(Status.DEADLINE_EXCEEDED, "Deadline Exceeded")

    def _close(self) -> None:
        self._finished = True
        self._count(0)
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Compressed(bytes):
    """A request message still compressed (grpc-encoding), as queued for its handler."""


def _request_id_field(request_id: str) -> bytes:
    return hpack_literal(b"x-request-id", request_id.encode())


def _start_trace(
    tracer: Tracer, path: bytes, fields: dict[bytes, bytes], request_id: str, peer: str
) -> ServerTrace | None:
    name = path.decode()[1:]  # "inference.GRPCInferenceService/ModelInfer"
    service, _, method = name.rpartition("/")
    traceparent, tracestate = fields.get(b"traceparent"), fields.get(b"tracestate")
    return tracer.start(
        "grpc",
        name,
        traceparent=None if traceparent is None else traceparent.decode("latin-1"),
        tracestate=None if tracestate is None else tracestate.decode("latin-1"),
        request_id=request_id,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
            "client.address": peer,
        },
    )


def _log_call(
    path: str,
    model: str,
    version: str,
    status: Status,
    started_ns: int,
    request_id: str,
    peer: str,
    key: str | None,
    trace_id: str | None = None,
    messages: int | None = None,
) -> None:
    access_log.record(
        "grpc",
        path.rpartition("/")[2],
        path,
        model or None,
        version or None,
        int(status),
        time.perf_counter_ns() - started_ns,
        request_id,
        peer,
        key,
        trace_id,
        messages,
    )


def _status_of(exc: Exception) -> tuple[Status, str, bytes]:
    """The status, its message and any further trailer fields, for every error of a call."""
    if isinstance(exc, RpcError):
        return exc.status, exc.message, b""
    if not isinstance(exc, ModelportError):
        log.error("unexpected error in a gRPC call", exc_info=exc)
    error = public_error(exc)
    extra = b""
    if isinstance(error, RateLimited):  # gRFC A6 server pushback, as REST sends Retry-After
        pushback = max(1, math.ceil(error.retry_after * 1000))
        extra = hpack_literal(b"grpc-retry-pushback-ms", str(pushback).encode())
    return Status[grpc_code_name(error.kind)], error.message, extra
