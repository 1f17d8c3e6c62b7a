"""One HTTP/2 connection as an asyncio protocol: frames in, stream lifecycle, receive windows.

It knows nothing of gRPC: for each new stream it calls the `StreamOpener` it was given with the
request headers and feeds the returned `StreamEvents` the stream's body, its end, or its reset.
The other direction is `send_headers` / `send_data` / `send_trailers` / `respond`, sent within
the peer's windows by `sender.Sender`. Writes made during one pass of the event loop go out in
one `transport.write`. Why this exists instead of grpcio: docs/architecture.md, "gRPC".

Its defences against hostile clients live beside it (budgets.py, watchdog.py, header_rules.py,
the answer budget in `_room_for`); docs/architecture.md, "Limits that protect the process",
lists them. The file stays one class, over the usual size: it is one state machine, and its
frame handlers all read and change the same stream table, windows and HPACK state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from modelport.frontends.budgets import ByteBudget, ConnectionCap
from modelport.frontends.grpc.http2 import frames as f
from modelport.frontends.grpc.http2.budgets import FrameWork, PeerBudget, PeerBudgets
from modelport.frontends.grpc.http2.frames import (
    ConnectionFailure,
    ErrorCode,
    Flag,
    FrameType,
    StreamFailure,
)
from modelport.frontends.grpc.http2.header_rules import Headers, trailer_problem
from modelport.frontends.grpc.http2.headers import HeaderDecoder
from modelport.frontends.grpc.http2.limits import Http2Limits
from modelport.frontends.grpc.http2.sender import STREAM_SEND_BUFFER, Sender
from modelport.frontends.grpc.http2.stream import Stream, StreamEvents
from modelport.frontends.grpc.http2.stream_ids import StreamIds
from modelport.frontends.grpc.http2.watchdog import Progress, Watchdog

log = logging.getLogger("modelport.grpc.http2")

_DATA = int(FrameType.DATA)  # plain ints for the per-frame comparisons
_SETTINGS = int(FrameType.SETTINGS)

StreamOpener = Callable[["Connection", int, Headers], StreamEvents]


def _ignore(limit: str) -> None:
    pass


class Shared:
    """What the connections of one server share: the connection cap, the budgets of client
    addresses, and the bytes of answers waiting for windows."""

    __slots__ = ("answers", "connections", "peers", "refused")

    def __init__(
        self,
        limits: Http2Limits,
        connections: ConnectionCap | None = None,
        answers: ByteBudget | None = None,
        refused: Callable[[str], None] | None = None,
    ) -> None:
        """`refused(limit)` hears of every client a defence refused or cut off (metrics)."""
        self.refused = refused or _ignore
        self.connections = connections
        self.peers = PeerBudgets(limits)
        self.answers = answers or ByteBudget(1 << 62)


class Connection(asyncio.Protocol):
    def __init__(
        self,
        opener: StreamOpener,
        limits: Http2Limits,
        on_closed: Callable[[Connection], None] | None = None,
        on_opened: Callable[[Connection], None] | None = None,
        shared: Shared | None = None,
    ) -> None:
        """`on_opened` runs when the connection is made: over TLS, once the handshake has
        succeeded (a failed handshake makes no connection and calls neither callback), and not
        for a connection refused by the cap; `shared`: the server's budgets (None: this
        connection's own)."""
        self._opener = opener
        self._limits = limits
        self._shared = shared = shared or Shared(limits)
        self._on_closed = on_closed
        self._on_opened = on_opened
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None
        self._buffer = bytearray()
        self._needed = len(f.PREFACE)  # bytes the buffer must hold before parsing can progress
        self._preface_seen = False
        self._settings_seen = False
        self._headers = HeaderDecoder(limits.max_header_list_size, limits.max_header_block)
        self._continuation: tuple[int, int, bytearray] | None = None
        self._streams: dict[int, Stream] = {}
        self._ids = StreamIds()
        self._budget: PeerBudget | None = None  # the client address's, once connected
        self._work = FrameWork(limits.frame_units, limits.frame_units_per_second)  # until then
        self._parse_paused = False  # frames_per_pass reached: the rest on the next pass
        self._admitted = False  # counted by the connection cap
        self._watchdog: Watchdog | None = None
        self.progress = Progress()
        self._write_paused = False
        self._pinged = -1e9  # when the last PING without a call open came
        self._ping_strikes = 0
        self.buffered = 0
        """Bytes of request messages still arriving on this connection (kept by the gRPC layer)."""
        self._recv_window = limits.connection_window
        self._recv_unacked = 0
        self._sender = Sender(self._write, self._local_end, shared.answers)
        self._writes: list[bytes | memoryview] = []  # joined by _flush into one write
        self._flush_scheduled = False
        self._receiving = False
        self._goaway_sent = False  # by us: new streams are ignored
        self._draining = False  # a GOAWAY either way: close once the open streams are done
        self._closing = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        cap = self._shared.connections
        if cap is not None:
            if not cap.admit():
                self._shared.refused("connections")
                self._refuse(b"the server is at its connection limit")
                return
            self._admitted = True
        budget = self._budget = self._shared.peers.of(self.peer)
        if budget.refuses():  # it ran out on another connection: no new start yet
            self._shared.refused("address_budget")
            self._refuse(b"this client address has used up its budget; try again later")
            return
        self._work = budget.work
        self._watchdog = Watchdog(self, self._limits)
        if self._on_opened is not None:
            self._on_opened(self)

    @property
    def peer(self) -> str:
        """The client's address, for the audit log (looked up once, when first asked)."""
        if self._peer is None:
            if self._transport is None:
                return "unknown"
            info = self._transport.get_extra_info("peername")
            self._peer = str(info[0]) if isinstance(info, tuple) and info else "unknown"
        return self._peer

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        buffer = self._buffer
        source: bytes | bytearray = data
        if buffer:
            buffer += data
            if len(buffer) < self._needed:
                return  # a large frame still arriving: no parsing, no copy
            source = buffer
        self._receiving = True
        try:
            used = self._receive(source)
        except ConnectionFailure as exc:
            if exc.limit:
                self._shared.refused(exc.limit)
            self._fail(exc.code, str(exc))
            return
        finally:
            self._receiving = False
        if source is buffer:
            try:
                del buffer[:used]
            except BufferError:  # a view of it is still alive somewhere: do not resize it
                self._buffer = bytearray(buffer[used:])
        elif used < len(data):
            buffer += memoryview(data)[used:]
        self.progress.parsed += used
        self._flush()
        if self._parse_paused and self._transport is not None and not self._closing:
            self._transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._parse_on)

    def _parse_on(self) -> None:
        """The next pass over frames left by one that reached frames_per_pass."""
        self._parse_paused = False
        if self._closing:
            return
        self._needed = 0
        self.data_received(b"")
        if not self._parse_paused and not self._write_paused and self._transport is not None:
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.stop()
        if self._admitted and self._shared.connections is not None:
            self._admitted = False
            self._shared.connections.release()
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            self._sender.forget(stream)
            stream.wake()
            if stream.events is not None:
                stream.events.reset()
        if self._on_closed is not None:
            self._on_closed(self)

    def pause_writing(self) -> None:
        # The peer reads slower than we answer: stop taking new requests until it catches up.
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.progress.window += 1
        if self._transport is not None and not self._closing and not self._parse_paused:
            self._transport.resume_reading()

    # -- what the watchdog reads -------------------------------------------------------------------

    @property
    def greeted(self) -> bool:
        return self._settings_seen

    @property
    def frame_pending(self) -> bool:
        return bool(self._buffer)

    @property
    def answers_waiting(self) -> bool:
        return self._write_paused or self._sender.queued > 0

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def expire(self, reason: str, limit: str) -> None:
        log.debug("closing an HTTP/2 connection: %s", reason)
        self._shared.refused(limit)
        if self._preface_seen:
            self._write(
                f.goaway(self._ids.last_opened, ErrorCode.ENHANCE_YOUR_CALM, reason.encode())
            )
            self._flush()
        self._closing = True
        if self._transport is not None:
            self._transport.abort()  # a peer that takes nothing would never let close() finish

    def retire(self) -> None:
        self.shutdown()

    # -- what the gRPC layer calls ---------------------------------------------------------------

    def send_headers(self, stream_id: int, block: bytes, end_stream: bool = False) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._sender.headers(stream, block, end_stream)

    def send_data(self, stream_id: int, data: bytes) -> bool:
        """False, and nothing queued, when the bytes would have to wait and this connection or
        the server already holds its share of answers waiting for windows."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return True
        size = len(data)
        waits = self._write_paused or size > self._sender.window or size > stream.send_window
        if waits and not self._room_for(stream, size):  # the check inline: it is on every call
            return False
        self._sender.data(stream, data)
        return True

    def send_trailers(self, stream_id: int, block: bytes) -> None:
        """Trailers end the stream, after any data still waiting for flow-control window."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._sender.trailers(stream, block)

    def respond(self, stream_id: int, headers: bytes, body: bytes, trailers: bytes) -> bool:
        """A whole answer; False (nothing sent) as for send_data."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return True
        size = len(body)
        waits = self._write_paused or size > self._sender.window or size > stream.send_window
        if waits and not self._room_for(stream, size):
            return False
        self._sender.headers(stream, headers)
        stream.trailers = trailers
        self._sender.data(stream, body)
        return True

    def _room_for(self, stream: Stream, size: int) -> bool:
        """Whether `size` answer bytes, some of which must wait for a window, may be queued."""
        sender = self._sender
        waiting = size if self._write_paused else size - min(sender.window, stream.send_window)
        if waiting <= 0:
            return True
        answers = self._shared.answers
        if answers.held + waiting > answers.limit:
            self._shared.refused("answer_bytes")
            return False
        queued = sender.queued
        if self._write_paused and self._transport is not None:
            queued += self._transport.get_write_buffer_size()
        # one answer may always wait on a connection that holds nothing else
        if queued and self.buffered + queued + waiting > self._limits.max_connection_bytes:
            self._shared.refused("connection_bytes")
            return False
        return True

    def refused(self, limit: str) -> None:
        """The gRPC layer refused a call by a limit (counted with the connection's own)."""
        self._shared.refused(limit)

    def delivered(self) -> None:
        """A streamed request message reached its handler: real work, worth a frame unit."""
        self._work.credit(1.0)

    def consumed(self, stream_id: int, size: int) -> None:
        """The application took `size` bytes of the stream's body: the peer may send more."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed or size <= 0:
            return
        stream.recv_unacked += size
        if stream.recv_unacked >= self._limits.stream_window // 2:
            self._write(f.window_update(stream_id, stream.recv_unacked))
            stream.recv_window += stream.recv_unacked
            stream.recv_unacked = 0

    async def writable(self, stream_id: int) -> None:
        """Wait while too much is queued for the stream (the peer's window is closed); returns
        at once if the stream is gone."""
        stream = self._streams.get(stream_id)
        while stream is not None and stream.queued >= STREAM_SEND_BUFFER:
            stream.drained = asyncio.get_running_loop().create_future()
            await stream.drained
            stream = self._streams.get(stream_id)

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def shutdown(self) -> None:
        """Graceful: GOAWAY now, then close once the streams already open have finished."""
        if self._closing or self._goaway_sent:
            return
        if not self._preface_seen or self._transport is None:  # nothing to say goodbye to
            self._close()
            return
        self._goaway_sent = self._draining = True
        self._write(f.goaway(self._ids.last_opened, ErrorCode.NO_ERROR))
        self._flush()
        self._close_if_done()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- receiving ---------------------------------------------------------------------------------

    def _receive(self, data: bytes | bytearray) -> int:
        """Handle every complete frame in `data`; return how many bytes were used."""
        pos = 0
        if not self._preface_seen:
            start = bytes(data[: len(f.PREFACE)])
            if not f.PREFACE.startswith(start):
                self._refuse_non_http2(start)
                return len(data)
            if len(start) < len(f.PREFACE):
                return 0
            self._preface_seen = True
            self._write(self._limits.announcement())
            pos = len(f.PREFACE)
        view = memoryview(data)
        end = len(data)
        limits = self._limits
        limit = limits.max_frame_size
        spent = 0  # frame units, charged once per pass (a pass is at most frames_per_pass)
        self._needed = 9
        try:
            for _ in range(limits.frames_per_pass):
                if end - pos < 9 or self._closing:
                    break
                high, low, kind, flags, stream_id = f.HEADER.unpack_from(data, pos)
                length = (high << 16) | low
                if length > limit:
                    raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes")
                if end - pos - 9 < length:
                    self._needed = 9 + length
                    break
                # the frame's cost: tiny DATA one unit (larger DATA moves real bytes, bounded
                # by the windows), SETTINGS one per setting, others one per KiB
                if kind == _DATA:
                    if length < 1024:
                        spent += 1
                elif kind == _SETTINGS:
                    if length > 6 * limits.max_settings:
                        raise ConnectionFailure(
                            ErrorCode.ENHANCE_YOUR_CALM, "SETTINGS frame too large", "frame_work"
                        )
                    spent += 1 + length // 6
                else:
                    spent += 1 + (length >> 10)
                self._frame(kind, flags, stream_id & 0x7FFFFFFF, view[pos + 9 : pos + 9 + length])
                pos += 9 + length
            else:
                self._parse_paused = end - pos >= 9 and not self._closing
        except ConnectionFailure:
            self._work.units -= spent
            raise
        self._charge(spent)
        return pos

    def _charge(self, units: int) -> None:
        """Spend a pass's frame units; a client out of them (after refilling) is cut off."""
        work = self._work
        work.units -= units
        if work.units < 0 and not work.refill() and not self._closing:
            if self._budget is not None:
                self._budget.spent = True
            raise ConnectionFailure(
                ErrorCode.ENHANCE_YOUR_CALM,
                "too many frames for the calls they carry",
                "frame_work",
            )

    def _frame(self, kind: int, flags: int, stream_id: int, payload: memoryview) -> None:
        if not self._settings_seen:
            if kind != FrameType.SETTINGS or flags & Flag.ACK:
                raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "the preface must be SETTINGS")
            self._settings_seen = True
        if self._continuation is not None and kind != FrameType.CONTINUATION:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "expected CONTINUATION")
        try:
            if kind == FrameType.DATA:
                self._on_data(flags, stream_id, payload)
            elif kind == FrameType.HEADERS:
                self._on_headers(flags, stream_id, payload)
            elif kind == FrameType.CONTINUATION:
                self._on_continuation(flags, stream_id, payload)
            elif kind == FrameType.WINDOW_UPDATE:
                self._on_window_update(stream_id, payload)
            elif kind == FrameType.SETTINGS:
                self._on_settings(flags, stream_id, payload)
            elif kind == FrameType.PING:
                self._on_ping(flags, stream_id, payload)
            elif kind == FrameType.RST_STREAM:
                self._on_rst_stream(stream_id, payload)
            elif kind == FrameType.PRIORITY:
                self._on_priority(stream_id, payload)
            elif kind == FrameType.GOAWAY:
                self._on_goaway(stream_id, payload)
            elif kind == FrameType.PUSH_PROMISE:
                raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "clients cannot push")
            # unknown frame types are ignored (RFC 9113 4.1)
        except StreamFailure as exc:
            self._stream_failed(exc.stream_id, exc.code)

    def _on_priority(self, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            if self._ids.idle(stream_id):  # no RST_STREAM on an idle stream
                raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, "PRIORITY size")
            raise StreamFailure(stream_id, ErrorCode.FRAME_SIZE_ERROR, "PRIORITY size")

    def _on_data(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self._recv_window -= size
        if self._recv_window < 0:
            raise ConnectionFailure(ErrorCode.FLOW_CONTROL_ERROR, "connection window exceeded")
        self._recv_unacked += size
        if self._recv_unacked >= self._limits.connection_window // 2:
            self._write(f.window_update(0, self._recv_unacked))
            self._recv_window += self._recv_unacked
            self._recv_unacked = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._ids.idle(stream_id):
                raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream we closed or reset: ignored, its window already counted
        if stream.remote_closed:
            raise StreamFailure(stream_id, ErrorCode.STREAM_CLOSED, "DATA after END_STREAM")
        stream.recv_window -= size
        if stream.recv_window < 0:
            raise StreamFailure(stream_id, ErrorCode.FLOW_CONTROL_ERROR, "stream window exceeded")
        if flags & Flag.PADDED:
            payload = f.unpad(payload)
            self.consumed(stream_id, size - len(payload))
        assert stream.events is not None
        if payload:
            stream.events.data(payload)
        if flags & Flag.END_STREAM and stream_id in self._streams:
            stream.remote_closed = True
            stream.events.end()

    def _on_headers(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        block = f.unpad(payload) if flags & Flag.PADDED else payload
        if flags & Flag.PRIORITY:
            if len(block) < 5:
                raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, "HEADERS priority too short")
            block = block[5:]
        if flags & Flag.END_HEADERS:
            self._headers_complete(stream_id, flags, bytes(block))
        else:
            self._continuation = (stream_id, flags, bytearray(block))
            self._headers.check_size(len(block))

    def _on_continuation(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if self._continuation is None or self._continuation[0] != stream_id:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "unexpected CONTINUATION")
        _, first_flags, block = self._continuation
        block += payload
        self._headers.check_size(len(block))
        if flags & Flag.END_HEADERS:
            self._continuation = None
            self._headers_complete(stream_id, first_flags, bytes(block))

    def _headers_complete(self, stream_id: int, flags: int, block: bytes) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers: gRPC clients send none, but they are legal
            trailers = self._headers.decode(block)  # always: the HPACK state must follow
            if stream.remote_closed:
                raise StreamFailure(stream_id, ErrorCode.STREAM_CLOSED, "HEADERS after END_STREAM")
            if not flags & Flag.END_STREAM:
                raise StreamFailure(stream_id, ErrorCode.PROTOCOL_ERROR, "trailers must end")
            problem = trailer_problem(trailers)
            if problem is not None:
                raise StreamFailure(stream_id, ErrorCode.PROTOCOL_ERROR, problem)
            stream.remote_closed = True
            assert stream.events is not None
            stream.events.end()
            return
        if stream_id % 2 == 0:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "client stream ids are odd")
        headers, problem = self._headers.decode_request(block)
        if not self._ids.open(stream_id, accepting=not self._goaway_sent):
            return  # after our GOAWAY, or trailers of a stream we reset: nothing to do
        if problem is not None:
            self._spend_reset()
            raise StreamFailure(stream_id, ErrorCode.PROTOCOL_ERROR, problem)
        if len(self._streams) >= self._limits.max_concurrent_streams:
            self._spend_reset()
            self._send_reset(stream_id, ErrorCode.REFUSED_STREAM)
            return
        stream = Stream(stream_id, self._limits.stream_window, self._sender.initial_window)
        stream.remote_closed = bool(flags & Flag.END_STREAM)
        self._streams[stream_id] = stream
        stream.events = self._opener(self, stream_id, headers)
        if stream.remote_closed and stream_id in self._streams:
            stream.events.end()

    def _on_window_update(self, stream_id: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE size")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._sender.grow(increment)
            return
        self.progress.window += 1
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._ids.idle(stream_id):
                raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE on idle stream")
            return
        if increment == 0:
            raise StreamFailure(stream_id, ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        self._sender.grow(increment, stream)

    def _on_settings(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id != 0:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & Flag.ACK:
            if payload:
                raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with payload")
            return
        window = frame_size = None
        for key, value in f.parse_settings(bytes(payload)):
            if key == f.Setting.INITIAL_WINDOW_SIZE:
                window = value
            elif key == f.Setting.MAX_FRAME_SIZE:
                frame_size = value
            elif key == f.Setting.ENABLE_PUSH and value > 1:
                raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "bad ENABLE_PUSH")
        self._sender.peer_settings(list(self._streams.values()), window, frame_size)
        self._write(f.frame(FrameType.SETTINGS, Flag.ACK, 0))  # only once they all applied

    def _on_ping(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id != 0:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, "PING size")
        if flags & Flag.ACK:
            return
        if not self._streams:  # a keepalive: at most every ping_interval (gRPC's ping strikes)
            now = asyncio.get_running_loop().time()
            if now - self._pinged < self._limits.ping_interval:
                self._ping_strikes += 1
                if self._ping_strikes > 2:
                    raise ConnectionFailure(ErrorCode.ENHANCE_YOUR_CALM, "too_many_pings", "pings")
            self._pinged = now
        self._write(f.frame(FrameType.PING, Flag.ACK, 0, bytes(payload)))

    def _on_rst_stream(self, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM size")
        if self._ids.idle(stream_id):
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._sender.forget(stream)
            stream.wake()
            if stream.events is not None:
                stream.events.reset()
            self._close_if_done()
            self._spend_reset()

    def _on_goaway(self, stream_id: int, payload: memoryview) -> None:
        if stream_id != 0:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY size")
        self._draining = True  # the peer opens no more streams; finish the open ones
        self._close_if_done()

    # -- sending -----------------------------------------------------------------------------------

    def _local_end(self, stream: Stream) -> None:
        """We sent END_STREAM. A peer still sending is told to stop (RST_STREAM NO_ERROR)."""
        self._streams.pop(stream.stream_id, None)
        self._sender.forget(stream)
        stream.wake()
        if stream.remote_closed:  # a call completed: the connection is doing real work
            self._work.credit(self._limits.call_units)
            self.progress.calls += 1
            self._ping_strikes = 0
        else:
            self._send_reset(stream.stream_id, ErrorCode.NO_ERROR)
        self._close_if_done()

    def _stream_failed(self, stream_id: int, code: ErrorCode) -> None:
        stream = self._streams.pop(stream_id, None)
        self._send_reset(stream_id, code)
        if stream is not None:
            self._sender.forget(stream)
            stream.wake()
            if stream.events is not None:
                stream.events.reset()

    def _spend_reset(self) -> None:
        """A stream the client opened ended before its call did: rapid reset's currency."""
        if self._budget is not None and not self._budget.resets.spend(1):
            self._budget.spent = True
            raise ConnectionFailure(ErrorCode.ENHANCE_YOUR_CALM, "too many streams reset", "resets")

    def _send_reset(self, stream_id: int, code: ErrorCode) -> None:
        self._write(f.rst_stream(stream_id, code))
        self._ids.reset(stream_id)

    def _write(self, data: bytes | memoryview) -> None:
        self._writes.append(data)
        if not self._receiving and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._writes and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(self._writes))
        self._writes.clear()

    # -- closing -----------------------------------------------------------------------------------

    def _close_if_done(self) -> None:
        if self._draining and not self._streams and self._transport is not None:
            self._flush()
            self._closing = True  # the rest of this read opens no more streams
            self._transport.close()

    def _fail(self, code: ErrorCode, message: str) -> None:
        log.info("closing an HTTP/2 connection: %s (%s)", message, code.name)
        self._write(f.goaway(self._ids.last_opened, code, message.encode()[:256]))
        self._flush()
        self._close()

    def _close(self) -> None:
        self._closing = True
        transport = self._transport
        if transport is not None:
            transport.close()
            if transport.get_write_buffer_size():  # close() waits for a peer that may never read
                asyncio.get_running_loop().call_later(self._limits.stall_timeout, transport.abort)

    def _refuse_non_http2(self, data: bytes) -> None:
        if data[:1].isalpha():  # most likely an HTTP/1.1 request line
            self._writes = [f.HTTP1_REFUSAL]
            self._flush()
        self._close()

    def _refuse(self, reason: bytes) -> None:
        """A connection not taken (the cap, an address out of budget): our SETTINGS and a GOAWAY
        naming the reason, then close (a gRPC client backs off and tries again, as after any
        GOAWAY)."""
        self._closing = True
        self._writes = [
            self._limits.announcement(),
            f.goaway(0, ErrorCode.ENHANCE_YOUR_CALM, reason),
        ]
        self._flush()
        if self._transport is not None:
            self._transport.close()
