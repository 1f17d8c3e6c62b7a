"""uvicorn's httptools protocol with the limits a hostile HTTP/1.1 client meets (each limit, its
default and the attack it answers: docs/architecture.md, "HTTP/1.1 port").

Connections past the port's `ConnectionCap` get a 503 on arrival. A request's line and headers
must be complete within `header_timeout` of the connection's start or the previous answer's end
(408), and within `max_header_bytes`, counted on the bytes fed to the parser, and `max_headers`
(431). A body may not stall for `stall_timeout` (408) and is charged to the shared `ByteBudget`
while it arrives (503); an answer the client stops reading is aborted after `stall_timeout`.

The normal path costs a few attribute checks per read, two clock reads per request and one per
body chunk: one timer per connection is re-armed lazily, when it fires (about once every
`header_timeout`) or when a deadline moves earlier than it, never once per request.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Final

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from modelport.core.errors import ErrorKind
from modelport.frontends.budgets import ByteBudget, ConnectionCap
from modelport.frontends.rest.errors import error_json
from modelport.frontends.status import http_status

MAX_HEADER_BYTES = 64 << 10
MAX_HEADERS = 100
REQUEST_TIMEOUT = 408
HEADERS_TOO_LARGE = 431
UNAVAILABLE = http_status(ErrorKind.UNAVAILABLE)

# What the connection waits for from the client (plain ints: compared on every read).
_HEADERS: Final = 0
_BODY: Final = 1
_CLOSED: Final = 2


def _ignore(limit: str) -> None:
    pass


@dataclass(frozen=True, slots=True)
class Http1Limits:
    header_timeout: float
    stall_timeout: float
    connections: ConnectionCap
    pending: ByteBudget
    on_refused: Callable[[str], None] = _ignore
    """Told the limit's name (connections, header_timeout, header_bytes, header_count,
    body_stall, write_stall, pending_bytes) on each refusal; observability/transport_metrics.py
    counts them."""
    max_header_bytes: int = MAX_HEADER_BYTES
    max_headers: int = MAX_HEADERS


@functools.cache
def _answer(status: int, message: str, retry_after: bool = False) -> bytes:
    """A complete response that closes the connection, with a v2 `{"error": ...}` body."""
    body = error_json(message)
    head = [
        STATUS_LINE[status],
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
    ]
    if retry_after:
        head.append(b"retry-after: 1\r\n")
    return b"".join([*head, b"\r\n", body])


class GuardedHttpProtocol(HttpToolsProtocol):
    """Use `protocol_class(limits)`: uvicorn builds protocols from a class and its own config."""

    limits: ClassVar[Http1Limits]

    # Per-connection state; class defaults, so the normal path needs no __init__ of its own.
    _phase: int = _HEADERS
    _admitted: bool = False
    _header_bytes: int = 0
    _header_deadline: float = 0.0
    _last_body: float = 0.0
    _held: int = 0
    _timer: asyncio.TimerHandle | None = None
    _wake_at: float = 0.0
    _write_paused: bool = False
    _write_moved_at: float = 0.0
    """While writing is paused: when the queued answer last got shorter (the client read)."""
    _write_queued: int = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limits = self.limits
        if not limits.connections.admit():
            self._phase = _CLOSED
            self.transport = transport
            cap = limits.connections.limit
            transport.write(
                _answer(UNAVAILABLE, f"the HTTP port is at its connection limit ({cap})", True)
            )
            transport.close()
            limits.on_refused("connections")
            return
        self._admitted = True
        super().connection_made(transport)
        self._header_deadline = self.loop.time() + limits.header_timeout
        self._arm(self._header_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:  # refused: uvicorn never knew of it
            return
        self._admitted = False
        self._phase = _CLOSED
        self.limits.connections.release()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._give_back()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == _HEADERS:
            room = self.limits.max_header_bytes - self._header_bytes
            if len(data) > room:
                self._feed_capped(data, room)
                return
            self._header_bytes += len(data)
        elif phase == _CLOSED:
            return
        super().data_received(data)

    def _feed_capped(self, data: bytes, room: int) -> None:
        """Feed no more than the header cap; what follows is fed only if the headers ended."""
        cap = self.limits.max_header_bytes
        self._header_bytes = cap
        super().data_received(data[:room])
        if self.transport.is_closing():
            return
        if self._phase == _HEADERS and self._header_bytes == cap:  # still in the same headers
            self._refuse_headers("header_bytes", f"the request's headers exceed {cap} bytes")
            return
        self.data_received(data[room:])  # body, or (reset to 0) a pipelined request's headers

    def send_400_response(self, msg: str) -> None:
        if self._phase != _CLOSED:  # refused already: what the parser reads next is moot
            super().send_400_response(msg)

    # A refused connection is closed, but the parser goes on through the rest of the bytes it
    # was given (raising from a callback would stop it, as a client error uvicorn logs): the
    # callbacks below ignore them.

    def on_headers_complete(self) -> None:
        limits = self.limits
        if self._phase == _CLOSED:
            return
        if len(self.headers) > limits.max_headers:
            self._refuse_headers(
                "header_count", f"the request has more than {limits.max_headers} header fields"
            )
            return
        now = self.loop.time()
        self._phase = _BODY
        self._last_body = now
        self._wake_by(now + limits.stall_timeout)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._last_body = self.loop.time()
        if self._phase == _CLOSED or self.cycle.response_complete:
            return  # refused, or answered already (uvicorn drops the rest)
        size = len(body)
        if not self.limits.pending.take(size):
            self._refuse_body(
                "pending_bytes",
                _answer(
                    UNAVAILABLE,
                    "the server is receiving too many request bodies at once "
                    f"(--max-pending-bytes {self.limits.pending.limit}); retry later",
                    True,
                ),
            )
            return
        self._held += size
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._phase == _CLOSED:
            return
        self._phase = _HEADERS
        self._header_bytes = 0
        self._give_back()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        deadline = self.loop.time() + self.limits.header_timeout
        self._header_deadline = deadline
        self._wake_by(deadline)
        super().on_response_complete()

    def pause_writing(self) -> None:
        """The client stopped reading its answer (the transport's buffer is full)."""
        if not self._admitted:  # a refused connection's one answer: uvicorn has no flow here
            return
        self._write_paused = True
        self._write_moved_at = self.loop.time()
        self._write_queued = self.transport.get_write_buffer_size()
        self._wake_by(self._write_moved_at + self.limits.stall_timeout)
        super().pause_writing()

    def resume_writing(self) -> None:
        """The client read most of what was queued: the next request's deadline counts anew."""
        if not self._admitted:
            return
        self._write_paused = False
        now = self.loop.time()
        self._header_deadline = max(self._header_deadline, now + self.limits.header_timeout)
        super().resume_writing()

    # The one timer: it checks the deadlines lazily and re-arms itself for the next one.

    def _arm(self, when: float) -> None:
        self._wake_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _wake_by(self, when: float) -> None:
        if when < self._wake_at and self._timer is not None:
            self._timer.cancel()
            self._arm(when)

    def _on_timer(self) -> None:
        self._timer = None
        if self._phase == _CLOSED:
            return
        limits = self.limits
        now = self.loop.time()
        paused = self._write_paused
        if paused:
            queued = self.transport.get_write_buffer_size()
            if queued < self._write_queued:  # the client reads, however slowly
                self._write_moved_at, self._write_queued = now, queued
            elif now - self._write_moved_at >= limits.stall_timeout:
                self._refuse("write_stall", None)
                return
        cycle = self.cycle
        # An answer is not given while most of it still waits for the client to read it.
        answered = (cycle is None or cycle.response_complete) and not paused
        if self._phase == _BODY:
            if self.flow.read_paused:  # we stopped reading, not the client
                self._last_body = now
            elif now - self._last_body >= limits.stall_timeout:
                message = f"the request body stalled for {limits.stall_timeout:g} s"
                self._refuse_body("body_stall", _answer(REQUEST_TIMEOUT, message))
                return
            wake = self._last_body + limits.stall_timeout
            if answered:  # the rest of an answered body counts against the next request
                if now >= self._header_deadline:
                    self._refuse("header_timeout", None)
                    return
                wake = min(wake, self._header_deadline)
        elif answered:
            if now >= self._header_deadline:
                message = f"the request's headers took longer than {limits.header_timeout:g} s"
                self._refuse(
                    "header_timeout",
                    _answer(REQUEST_TIMEOUT, message) if self._header_bytes else None,
                )
                return
            wake = self._header_deadline
        else:  # a request is being answered; its end sets the next deadline
            wake = now + limits.header_timeout
        if paused:
            wake = min(wake, self._write_moved_at + limits.stall_timeout)
        self._arm(wake)

    # Refusals: answer when no other answer is on the wire, then close.

    def _refuse_headers(self, limit: str, message: str) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        self._refuse(limit, _answer(HEADERS_TOO_LARGE, message) if idle else None)

    def _refuse_body(self, limit: str, answer: bytes) -> None:
        unanswered = not self.pipeline and not self.cycle.response_started
        self._refuse(limit, answer if unanswered else None)

    def _refuse(self, limit: str, answer: bytes | None) -> None:
        self._phase = _CLOSED
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's task reads a disconnect; its sends are dropped
            cycle.message_event.set()
        transport = self.transport
        if answer is not None and not transport.is_closing():
            transport.write(answer)
        if transport.get_write_buffer_size():
            transport.abort()  # close() would hold the socket until the client reads the rest
        else:
            transport.close()
        self.limits.on_refused(limit)

    def _give_back(self) -> None:
        if self._held:
            self.limits.pending.give(self._held)
            self._held = 0


def protocol_class(limits: Http1Limits) -> type[GuardedHttpProtocol]:
    """The protocol class to pass as uvicorn.Config(http=...), with these limits bound."""

    class BoundHttpProtocol(GuardedHttpProtocol):
        pass

    BoundHttpProtocol.limits = limits
    return BoundHttpProtocol
