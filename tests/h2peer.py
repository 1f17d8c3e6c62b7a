"""An h2 client wired to our HTTP/2 server Connection without a socket, for the protocol tests.

The server writes into a fake transport whose bytes feed h2's client state machine, and h2's
bytes feed the Connection. h2 is an independent implementation of RFC 9113 and raises on any frame
that breaks it, so every exchange also checks our framing, flow control and HPACK output. The
handlers are a tiny test service over protobuf's own BytesValue (our generated v2 messages must not
share a process with tritonclient's copies).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import hpack
from google.protobuf.wrappers_pb2 import BytesValue

from modelport.core.errors import InvalidInput
from modelport.frontends.budgets import ByteBudget
from modelport.frontends.grpc.http2 import frames as f
from modelport.frontends.grpc.http2.connection import Connection, Shared
from modelport.frontends.grpc.http2.limits import Http2Limits
from modelport.frontends.grpc.rpc import Dispatcher, Method, frame_message

ECHO, WAIT, FAIL, CHAT = (b"/t.S/Echo", b"/t.S/Wait", b"/t.S/Fail", b"/t.S/Chat")
TICK, BAD = (b"/t.S/Tick", b"/t.S/Bad")


class FakeTransport:
    def __init__(self, address: str = "127.0.0.1") -> None:
        self.address = address
        self.out = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.address, 50000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Service:
    """Handlers for the test methods; they record what they saw."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cancelled = 0
        self.seen: list[Any] = []
        self.chat_started = asyncio.Event()
        self.chatted = 0  # requests the chat handler has taken

    async def echo(self, request: BytesValue, call: Any) -> BytesValue:
        self.seen.append(call.time_remaining())
        return BytesValue(value=request.value)

    async def wait(self, request: BytesValue, call: Any) -> BytesValue:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return BytesValue(value=request.value)

    async def fail(self, request: BytesValue, call: Any) -> BytesValue:
        raise InvalidInput(f"bad input 'x': {ident(request)} ünïcode 100%")

    async def chat(
        self, requests: AsyncIterator[BytesValue], call: Any
    ) -> AsyncIterator[BytesValue]:
        self.chat_started.set()
        await self.release.wait()
        async for request in requests:
            self.chatted += 1
            yield BytesValue(value=request.value.upper())

    async def tick(
        self, requests: AsyncIterator[BytesValue], call: Any
    ) -> AsyncIterator[BytesValue]:
        """One reply at once, then nothing until released."""
        yield BytesValue(value=b"tick:")
        await self.release.wait()

    async def bad(self, request: BytesValue, call: Any) -> Any:
        return "not a message"  # a handler bug: the call must still end

    def methods(self) -> dict[bytes, Method]:
        request = BytesValue
        return {
            ECHO: Method(request, False, self.echo),
            WAIT: Method(request, False, self.wait),
            FAIL: Method(request, False, self.fail),
            CHAT: Method(request, True, self.chat),
            TICK: Method(request, True, self.tick),
            BAD: Method(request, False, self.bad),
        }


class Peer:
    """An h2 client connected to a server Connection through FakeTransport.

    `pump` moves bytes both ways until quiet, sends request bodies as the server's windows allow,
    and (unless `acknowledge` is off) returns flow-control credit for every byte received.
    """

    def __init__(
        self,
        limits: Http2Limits | None = None,
        max_message: int = 1 << 20,
        client_settings: dict[int, int] | None = None,
        max_connection_bytes: int | None = None,
        shared: Shared | None = None,
        pending: ByteBudget | None = None,
        address: str = "127.0.0.1",
    ) -> None:
        """`shared`, `pending`: budgets shared with other peers (as a server's connections do)."""
        self.service = Service()
        limits = limits or Http2Limits()
        self.dispatcher = Dispatcher(
            self.service.methods(),
            max_message,
            max_connection_bytes,
            pending=pending,
            stall_timeout=limits.stall_timeout,
        )
        self.server = Connection(self.dispatcher, limits, shared=shared)
        self.transport = FakeTransport(address)
        self.server.connection_made(self.transport)  # type: ignore[arg-type]
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.client = h2.connection.H2Connection(config)
        self.client.initiate_connection()
        if client_settings:
            self.client.update_settings(client_settings)
        self.acknowledge = True
        self.pending: dict[int, tuple[bytes, bool, int | None]] = {}
        self.streams: dict[int, dict[str, Any]] = {}
        self.events: list[h2.events.Event] = []

    async def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            self._send_pending()
            outgoing = self.client.data_to_send()
            if outgoing:
                self.server.data_received(outgoing)
            await asyncio.sleep(0)
            if not self.transport.out and not outgoing:
                await asyncio.sleep(0)
                if not self.transport.out:
                    return
            data, self.transport.out = bytes(self.transport.out), bytearray()
            if data:
                for event in self.client.receive_data(data):
                    self._record(event)

    def _send_pending(self) -> None:
        for stream_id, (body, end, pad) in list(self.pending.items()):
            room = min(
                self.client.local_flow_control_window(stream_id),
                self.client.max_outbound_frame_size - (pad or 0) - 1,
            )
            while body and room > 0:
                piece, body = body[:room], body[room:]
                last = end and not body
                self.client.send_data(stream_id, piece, end_stream=last, pad_length=pad)
                room = min(
                    self.client.local_flow_control_window(stream_id),
                    self.client.max_outbound_frame_size - (pad or 0) - 1,
                )
            if body:
                self.pending[stream_id] = (body, end, pad)
            else:
                del self.pending[stream_id]

    def _record(self, event: h2.events.Event) -> None:
        self.events.append(event)
        stream_id = getattr(event, "stream_id", None)
        if not stream_id:
            return
        reply = self.streams.setdefault(
            stream_id, {"headers": None, "body": b"", "trailers": None, "reset": None}
        )
        if isinstance(event, h2.events.ResponseReceived):
            reply["headers"] = dict(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            reply["body"] += event.data
            if self.acknowledge:
                self.client.acknowledge_received_data(event.flow_controlled_length, stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            reply["trailers"] = dict(event.headers)
        elif isinstance(event, h2.events.StreamReset):
            reply["reset"] = event.error_code
            self.pending.pop(stream_id, None)  # the rest of its body cannot be sent

    def call(
        self,
        path: bytes,
        message: bytes,
        *,
        extra: tuple[tuple[bytes, bytes], ...] = (),
        end: bool = True,
        pad: int | None = None,
    ) -> int:
        stream_id = self.client.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path),
            (b":authority", b"test"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            *extra,
        ]
        self.client.send_headers(stream_id, headers, end_stream=end and not message)
        if message:
            self.pending[stream_id] = (message, end, pad)
            self._send_pending()
        return stream_id

    def reply(self, stream_id: int) -> dict[str, Any]:
        return self.streams.get(
            stream_id, {"headers": None, "body": b"", "trailers": None, "reset": None}
        )

    def terminated(self) -> h2.events.ConnectionTerminated | None:
        ends = [e for e in self.events if isinstance(e, h2.events.ConnectionTerminated)]
        return ends[0] if ends else None


def request(request_id: str, payload: bytes = b"") -> bytes:
    """A framed message carrying an id and a payload: `id:payload`."""
    return frame_message(BytesValue(value=request_id.encode() + b":" + payload).SerializeToString())


def ident(message: BytesValue) -> str:
    return message.value.split(b":", 1)[0].decode()


def payload_of(message: BytesValue) -> bytes:
    return message.value.split(b":", 1)[1]


def messages(body: bytes) -> list[BytesValue]:
    out = []
    while body:
        size = int.from_bytes(body[1:5], "big")
        out.append(BytesValue.FromString(body[5 : 5 + size]))
        body = body[5 + size :]
    return out


def status_of(reply: dict[str, Any]) -> tuple[int, str]:
    block = reply["trailers"] or reply["headers"]
    return int(block[b"grpc-status"]), unquote(block.get(b"grpc-message", b"").decode())


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def raw_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream, payload) of each frame, read by hand where h2 cannot follow."""
    out, pos = [], 0
    while pos + 9 <= len(data):
        high, low, kind, flags, stream_id = f.HEADER.unpack_from(data, pos)
        length = (high << 16) | low
        out.append((kind, flags, stream_id & 0x7FFFFFFF, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return out


def grpc_statuses(data: bytes) -> dict[int, int]:
    """grpc-status per stream in the server's output (our blocks never index, so a fresh
    decoder reads each one)."""
    statuses = {}
    for kind, _, stream_id, payload in raw_frames(data):
        if kind == f.FrameType.HEADERS:
            headers = dict(hpack.Decoder().decode(payload, raw=True))
            if b"grpc-status" in headers:
                statuses[stream_id] = int(headers[b"grpc-status"])
    return statuses


def request_block(peer: Peer, path: bytes) -> bytes:
    """A gRPC request's header block, encoded by the peer's HPACK encoder (for hand-made frames)."""
    return peer.client.encoder.encode(
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path),
            (b":authority", b"t"),
            (b"content-type", b"application/grpc"),
        ]
    )


def raw_peer(limits: Http2Limits | None = None, shared: Shared | None = None) -> Peer:
    """A peer whose preface and SETTINGS went out, for hand-made frames after them."""
    peer = Peer(limits, shared=shared)
    peer.server.data_received(peer.client.data_to_send())
    return peer
