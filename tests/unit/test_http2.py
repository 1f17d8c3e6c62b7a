"""The HTTP/2 + gRPC layer against an independent implementation: h2's client state machine.

No socket: the server Connection writes into a fake transport whose bytes feed h2, and h2's bytes
feed the Connection. h2 raises on any frame that breaks RFC 9113, so every exchange here also
checks our framing, flow control and HPACK output.
"""

from __future__ import annotations

import asyncio
import gzip
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from google.protobuf.wrappers_pb2 import BytesValue

from modelport.core.errors import InvalidInput
from modelport.frontends.grpc.http2 import frames as f
from modelport.frontends.grpc.http2.connection import Connection, Http2Limits
from modelport.frontends.grpc.rpc import (
    Dispatcher,
    Method,
    RpcError,
    Status,
    frame_message,
    parse_timeout,
    status_block,
)

ECHO, WAIT, FAIL, CHAT = (b"/t.S/Echo", b"/t.S/Wait", b"/t.S/Fail", b"/t.S/Chat")


class FakeTransport:
    def __init__(self) -> None:
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
            yield BytesValue(value=request.value.upper())

    def methods(self) -> dict[bytes, Method]:
        request = BytesValue
        return {
            ECHO: Method(request, False, self.echo),
            WAIT: Method(request, False, self.wait),
            FAIL: Method(request, False, self.fail),
            CHAT: Method(request, True, self.chat),
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
    ) -> None:
        self.service = Service()
        self.dispatcher = Dispatcher(self.service.methods(), max_message)
        self.server = Connection(self.dispatcher, limits or Http2Limits())
        self.transport = FakeTransport()
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


def test_unary_call_round_trip() -> None:
    async def scenario() -> None:
        peer = Peer()
        stream = peer.call(ECHO, request("r1", b"abc"))
        await peer.pump()
        reply = peer.reply(stream)
        assert reply["headers"][b":status"] == b"200"
        assert reply["headers"][b"content-type"] == b"application/grpc"
        assert status_of(reply) == (0, "")
        [answer] = messages(reply["body"])
        assert (ident(answer), payload_of(answer)) == ("r1", b"abc")
        assert peer.service.seen == [None]  # no grpc-timeout: no deadline
        assert peer.server.active_streams == 0

    run(scenario)


def test_many_calls_at_once_with_padding_and_repeated_header_blocks() -> None:
    async def scenario() -> None:
        peer = Peer()
        streams = [peer.call(ECHO, request(f"r{i}"), pad=7) for i in range(40)]
        await peer.pump()
        assert [ident(messages(peer.reply(s)["body"])[0]) for s in streams] == [
            f"r{i}" for i in range(40)
        ]

    run(scenario)


def test_a_message_larger_than_both_receive_windows_arrives_whole() -> None:
    async def scenario() -> None:
        limits = Http2Limits(stream_window=1 << 16, connection_window=1 << 17)
        peer = Peer(limits, max_message=8 << 20)
        payload = bytes(range(256)) * (3 << 12)  # 3 MiB, many times both windows
        stream = peer.call(ECHO, request("big", payload))
        await peer.pump(rounds=2000)
        reply = peer.reply(stream)
        assert status_of(reply) == (0, "")
        assert payload_of(messages(reply["body"])[0]) == payload

    run(scenario)


def test_responses_wait_for_the_clients_window_and_respect_its_frame_size() -> None:
    async def scenario() -> None:
        window = 20_000
        peer = Peer(client_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        peer.acknowledge = False
        payload = bytes(range(256)) * 400  # 100 KiB answer
        stream = peer.call(ECHO, request("out", payload))
        await peer.pump()
        data = [e for e in peer.events if isinstance(e, h2.events.DataReceived)]
        assert sum(e.flow_controlled_length for e in data) == window
        assert max(len(e.data) for e in data) <= f.DEFAULT_FRAME_SIZE
        assert peer.reply(stream)["trailers"] is None  # trailers wait behind the data
        peer.client.acknowledge_received_data(window, stream)
        peer.client.increment_flow_control_window(1 << 20)
        peer.client.increment_flow_control_window(1 << 20, stream_id=stream)
        peer.acknowledge = True
        await peer.pump()
        reply = peer.reply(stream)
        assert status_of(reply) == (0, "")
        assert payload_of(messages(reply["body"])[0]) == payload

    run(scenario)


def test_errors_are_trailers_only_with_a_percent_encoded_message() -> None:
    async def scenario() -> None:
        peer = Peer()
        failed = peer.call(FAIL, request("r9"))
        missing = peer.call(b"/t.S/Nope", request("r"))
        await peer.pump()
        reply = peer.reply(failed)
        assert reply["body"] == b"" and reply["trailers"] is None
        assert status_of(reply) == (Status.INVALID_ARGUMENT, "bad input 'x': r9 ünïcode 100%")
        assert b"%C3%BC" in reply["headers"][b"grpc-message"]  # UTF-8, percent-encoded
        assert status_of(peer.reply(missing)) == (
            Status.UNIMPLEMENTED,
            "Method not found: /t.S/Nope",
        )

    run(scenario)


def test_non_grpc_requests_get_http_statuses() -> None:
    async def scenario() -> None:
        peer = Peer()
        wrong_type = peer.client.get_next_available_stream_id()
        peer.client.send_headers(
            wrong_type,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", ECHO),
                (b":authority", b"t"),
                (b"content-type", b"application/json"),
            ],
            end_stream=True,
        )
        get = peer.client.get_next_available_stream_id()
        peer.client.send_headers(
            get,
            [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"t")],
            end_stream=True,
        )
        await peer.pump()
        assert peer.reply(wrong_type)["headers"][b":status"] == b"415"
        assert peer.reply(get)["headers"][b":status"] == b"405"

    run(scenario)


def test_deadline_cancels_the_handler_and_answers_deadline_exceeded() -> None:
    async def scenario() -> None:
        peer = Peer()
        stream = peer.call(WAIT, request("slow"), extra=((b"grpc-timeout", b"30m"),))
        quick = peer.call(ECHO, request("quick"), extra=((b"grpc-timeout", b"2S"),))
        await peer.pump()
        assert 1.0 < peer.service.seen[0] <= 2.0  # the handler sees its time remaining
        await asyncio.sleep(0.1)
        await peer.pump()
        assert status_of(peer.reply(stream)) == (Status.DEADLINE_EXCEEDED, "Deadline Exceeded")
        assert status_of(peer.reply(quick)) == (0, "")
        assert peer.service.cancelled == 1

    run(scenario)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"1H", 3600.0), (b"2M", 120.0), (b"3S", 3.0), (b"40m", 0.04), (b"5u", 5e-6), (b"7n", 7e-9)],
)
def test_grpc_timeout_units(value: bytes, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"123456789S", b"1x", b"-1S", b"1.5S"])
def test_malformed_grpc_timeout_is_refused(value: bytes) -> None:
    with pytest.raises(RpcError, match="malformed grpc-timeout"):
        parse_timeout(value)


def test_client_reset_cancels_the_handler() -> None:
    async def scenario() -> None:
        peer = Peer()
        stream = peer.call(WAIT, request("w"))
        await peer.pump()
        assert peer.server.active_streams == 1
        peer.client.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        await peer.pump()
        await asyncio.sleep(0)
        assert peer.service.cancelled == 1
        assert peer.server.active_streams == 0
        assert peer.reply(stream)["headers"] is None  # nothing is sent on a reset stream

    run(scenario)


def test_a_message_over_the_limit_is_refused_before_it_is_buffered() -> None:
    async def scenario() -> None:
        peer = Peer(max_message=1000)
        header_only = b"\x00" + (50_000).to_bytes(4, "big") + b"x" * 100
        stream = peer.call(ECHO, header_only, end=False)
        await peer.pump()
        reply = peer.reply(stream)
        assert status_of(reply) == (
            Status.RESOURCE_EXHAUSTED,
            "received message larger than max (50000 vs. 1000)",
        )
        assert reply["reset"] == 0  # RST_STREAM(NO_ERROR): stop sending the rest
        ok = peer.call(ECHO, request("after"))
        await peer.pump()
        assert status_of(peer.reply(ok)) == (0, "")

    run(scenario)


def test_compressed_messages() -> None:
    async def scenario() -> None:
        peer = Peer(max_message=10_000)
        body = BytesValue(value=b"gz:" + b"z" * 5000).SerializeToString()
        packed = gzip.compress(body)
        framed = b"\x01" + len(packed).to_bytes(4, "big") + packed
        good = peer.call(ECHO, framed, extra=((b"grpc-encoding", b"gzip"),))
        unlabelled = peer.call(ECHO, framed)
        unknown = peer.call(ECHO, framed, extra=((b"grpc-encoding", b"snappy"),))
        bomb = gzip.compress(b"\x00" * 1_000_000)
        too_big = peer.call(
            ECHO,
            b"\x01" + len(bomb).to_bytes(4, "big") + bomb,
            extra=((b"grpc-encoding", b"gzip"),),
        )
        await peer.pump()
        assert payload_of(messages(peer.reply(good)["body"])[0]) == b"z" * 5000
        assert status_of(peer.reply(unlabelled))[0] == Status.INTERNAL
        assert status_of(peer.reply(unknown)) == (
            Status.UNIMPLEMENTED,
            "grpc-encoding 'snappy' is not supported",
        )
        code, message = status_of(peer.reply(too_big))
        assert code == Status.RESOURCE_EXHAUSTED and "exceeds the limit of 10000" in message

    run(scenario)


def test_unary_calls_need_exactly_one_message() -> None:
    async def scenario() -> None:
        peer = Peer()
        none = peer.call(ECHO, b"")
        two = peer.call(ECHO, request("a") + request("b"))
        partial = peer.call(ECHO, request("c")[:-1])
        await peer.pump()
        for stream in (none, two, partial):
            assert status_of(peer.reply(stream))[0] == Status.INTERNAL
        assert "more than one" in status_of(peer.reply(two))[1]

    run(scenario)


def test_bidirectional_stream_with_backpressure() -> None:
    async def scenario() -> None:
        peer = Peer(limits=Http2Limits(stream_window=1 << 16))
        body = b"".join(request(f"m{i}", b"p" * 1000) for i in range(200))  # ~200 KB
        stream = peer.call(CHAT, body, end=True)
        await peer.pump()
        await peer.service.chat_started.wait()
        # The handler has read nothing yet: only about one window of messages got in.
        assert stream in peer.pending
        peer.service.release.set()
        for _ in range(20):
            await peer.pump()
        reply = peer.reply(stream)
        assert [ident(m) for m in messages(reply["body"])] == [f"M{i}" for i in range(200)]
        assert status_of(reply) == (0, "")
        assert reply["trailers"] is not None  # headers, messages, then trailers

    run(scenario)


def test_settings_ping_and_unknown_frames() -> None:
    async def scenario() -> None:
        peer = Peer()
        await peer.pump()
        peer.client.ping(b"12345678")
        peer.server.data_received(f.frame(0xFA, 0, 0, b"ignored"))  # unknown type
        await peer.pump()
        acks = [e for e in peer.events if isinstance(e, h2.events.PingAckReceived)]
        assert [a.ping_data for a in acks] == [b"12345678"]
        assert any(isinstance(e, h2.events.SettingsAcknowledged) for e in peer.events)
        changed = [e for e in peer.events if isinstance(e, h2.events.RemoteSettingsChanged)]
        advertised = {code: s.new_value for code, s in changed[0].changed_settings.items()}
        assert advertised[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == 1 << 20
        assert peer.terminated() is None

    run(scenario)


def test_header_cache_follows_the_dynamic_table() -> None:
    """The same indexed bytes mean another method once literals have changed the table."""

    def indexed(name: bytes, value: bytes) -> bytes:  # literal with incremental indexing
        return (
            b"\x40" + f.hpack_integer(len(name), 7) + name + f.hpack_integer(len(value), 7) + value
        )

    def inserting(path: bytes) -> bytes:  # afterwards: 62 content-type, 63 this :path
        return b"\x83\x86" + indexed(b":path", path) + indexed(b"content-type", b"application/grpc")

    referencing = b"\x83\x86\xbf\xbe"  # :method POST, :scheme http, index 63, index 62

    async def scenario() -> None:
        peer = _raw_peer()
        blocks = [inserting(ECHO), referencing, referencing, inserting(FAIL), referencing]
        for number, block in enumerate(blocks):
            stream_id = 2 * number + 1
            peer.server.data_received(
                f.frame(f.FrameType.HEADERS, f.Flag.END_HEADERS, stream_id, block)
                + f.frame(f.FrameType.DATA, f.Flag.END_STREAM, stream_id, request(str(number)))
            )
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        # streams 1-5 reach Echo (OK); 7 and 9 reach Fail (INVALID_ARGUMENT)
        assert grpc_statuses(bytes(peer.transport.out)) == {1: 0, 3: 0, 5: 0, 7: 3, 9: 3}

    run(scenario)


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
    import hpack

    statuses = {}
    for kind, _, stream_id, payload in raw_frames(data):
        if kind == f.FrameType.HEADERS:
            headers = dict(hpack.Decoder().decode(payload, raw=True))
            if b"grpc-status" in headers:
                statuses[stream_id] = int(headers[b"grpc-status"])
    return statuses


def _raw_peer(limits: Http2Limits | None = None) -> Peer:
    """A peer whose preface and SETTINGS went out, for hand-made frames after them."""
    peer = Peer(limits)
    peer.server.data_received(peer.client.data_to_send())
    return peer


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (f.frame(f.FrameType.DATA, 0, 0, b"x"), f.ErrorCode.PROTOCOL_ERROR),
        (f.frame(f.FrameType.DATA, 0, 7, b"x"), f.ErrorCode.PROTOCOL_ERROR),  # idle stream
        (f.frame(f.FrameType.HEADERS, 4, 2, b"\x82"), f.ErrorCode.PROTOCOL_ERROR),  # even id
        (f.frame(f.FrameType.PING, 0, 0, b"short"), f.ErrorCode.FRAME_SIZE_ERROR),
        (f.frame(f.FrameType.SETTINGS, 0, 0, b"12345"), f.ErrorCode.FRAME_SIZE_ERROR),
        (f.settings({f.Setting.INITIAL_WINDOW_SIZE: 2**31}), f.ErrorCode.FLOW_CONTROL_ERROR),
        (f.settings({f.Setting.MAX_FRAME_SIZE: 100}), f.ErrorCode.PROTOCOL_ERROR),
        (f.window_update(0, 0), f.ErrorCode.PROTOCOL_ERROR),
        (f.window_update(0, 2**31 - 1), f.ErrorCode.FLOW_CONTROL_ERROR),
        (f.frame(f.FrameType.PUSH_PROMISE, 4, 1, b"\0\0\0\2"), f.ErrorCode.PROTOCOL_ERROR),
        (f.frame(f.FrameType.CONTINUATION, 4, 1, b"\x82"), f.ErrorCode.PROTOCOL_ERROR),
        (f.frame(f.FrameType.HEADERS, 4, 1, b"\xff\xff\xff"), f.ErrorCode.COMPRESSION_ERROR),
        (f.frame(f.FrameType.RST_STREAM, 0, 9, b"\0\0\0\0"), f.ErrorCode.PROTOCOL_ERROR),
        (b"\x10\x00\x01" + bytes(6), f.ErrorCode.FRAME_SIZE_ERROR),  # 1 MiB + 1 frame
    ],
    ids=[
        "data-stream-0",
        "data-idle",
        "even-stream",
        "ping-size",
        "settings-size",
        "window-setting",
        "frame-size-setting",
        "zero-update",
        "window-overflow",
        "push",
        "stray-continuation",
        "bad-hpack",
        "rst-idle",
        "oversized-frame",
    ],
)
def test_protocol_violations_end_the_connection_with_goaway(frame: bytes, code: int) -> None:
    async def scenario() -> None:
        peer = _raw_peer()
        peer.server.data_received(frame)
        await asyncio.sleep(0)
        goaway = peer.transport.out.rfind(b"\x07\x00\x00\x00\x00\x00")
        assert goaway > 0, "no GOAWAY frame"
        assert struct.unpack_from(">I", peer.transport.out, goaway + 10)[0] == code
        assert peer.transport.closed

    run(scenario)


def test_flow_control_violation_on_a_stream_resets_only_that_stream() -> None:
    async def scenario() -> None:
        peer = _raw_peer(Http2Limits(stream_window=100))
        block = peer.client.encoder.encode(
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", ECHO),
                (b":authority", b"t"),
                (b"content-type", b"application/grpc"),
            ]
        )
        peer.server.data_received(f.frame(f.FrameType.HEADERS, 4, 1, block))
        peer.server.data_received(f.frame(f.FrameType.DATA, 0, 1, b"\0" * 101))
        await asyncio.sleep(0)
        assert f.rst_stream(1, f.ErrorCode.FLOW_CONTROL_ERROR) in peer.transport.out
        assert not peer.transport.closed

    run(scenario)


def test_continuation_frames_and_too_many_streams() -> None:
    async def scenario() -> None:
        peer = _raw_peer(Http2Limits(max_concurrent_streams=1))
        block = peer.client.encoder.encode(
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", WAIT),
                (b":authority", b"t"),
                (b"content-type", b"application/grpc"),
            ]
        )
        peer.server.data_received(
            f.frame(f.FrameType.HEADERS, 0, 1, block[:3])
            + f.frame(f.FrameType.CONTINUATION, 0, 1, block[3:6])
            + f.frame(f.FrameType.CONTINUATION, 4, 1, block[6:])
        )
        assert peer.server.active_streams == 1
        again = peer.client.encoder.encode([(b":method", b"POST"), (b":path", ECHO)])
        peer.server.data_received(f.frame(f.FrameType.HEADERS, 4, 3, again))
        await asyncio.sleep(0)
        assert f.rst_stream(3, f.ErrorCode.REFUSED_STREAM) in peer.transport.out

    run(scenario)


def test_an_http1_request_gets_a_plain_answer() -> None:
    async def scenario() -> None:
        connection = Connection(Dispatcher({}, 1000), Http2Limits())
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        transport.out.clear()
        connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert transport.out.startswith(b"HTTP/1.1 400 Bad Request")
        assert b"serves gRPC" in transport.out
        assert transport.closed

    run(scenario)


def test_graceful_shutdown_finishes_open_calls() -> None:
    async def scenario() -> None:
        peer = Peer()
        stream = peer.call(WAIT, request("open"))
        await peer.pump()
        peer.server.shutdown()
        await asyncio.sleep(0)
        # h2 stops at GOAWAY (it has no "finish the open streams" state): read by hand
        out = bytes(peer.transport.out)
        [goaway] = [p for kind, _, _, p in raw_frames(out) if kind == f.FrameType.GOAWAY]
        assert struct.unpack(">II", goaway[:8]) == (stream, 0)  # last stream, NO_ERROR
        assert not peer.transport.closed  # the open call still runs
        late = peer.client.get_next_available_stream_id()
        peer.server.data_received(
            f.frame(f.FrameType.HEADERS, 5, late, peer.client.encoder.encode([(b":path", ECHO)]))
        )
        peer.service.release.set()
        for _ in range(3):
            await asyncio.sleep(0)
        assert grpc_statuses(bytes(peer.transport.out)) == {stream: 0}  # the late one ignored
        assert peer.transport.closed

    run(scenario)


def test_a_reader_that_stops_reading_pauses_the_connection() -> None:
    async def scenario() -> None:
        peer = Peer()
        peer.server.pause_writing()
        assert not peer.transport.reading
        peer.server.resume_writing()
        assert peer.transport.reading

    run(scenario)


def test_status_block_and_hpack_literals_decode_with_an_independent_decoder() -> None:
    import hpack

    block = status_block(Status.NOT_FOUND, "x" * 300, headers=True)
    headers = dict(hpack.Decoder().decode(block, raw=True))
    assert headers[b":status"] == b"200"
    assert headers[b"grpc-status"] == b"5"
    assert headers[b"grpc-message"] == b"x" * 300  # a length over 127 needs a multi-byte int
    assert hpack.Decoder().decode(f.hpack_status(415), raw=True) == [(b":status", b"415")]
