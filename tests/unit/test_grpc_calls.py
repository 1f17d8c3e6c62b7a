"""gRPC calls over our HTTP/2 streams: status trailers, deadlines, cancellation, message limits,
compression and streaming backpressure (tests/h2peer.py drives them with h2's client)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import unquote

import h2.errors
import h2.events
import h2.settings
import hpack
import pytest
from google.protobuf.wrappers_pb2 import BytesValue

from modelport.frontends.grpc.http2 import frames as f
from modelport.frontends.grpc.http2.limits import Http2Limits
from modelport.frontends.grpc.rpc import RpcError, Status, parse_timeout, status_block
from tests.h2peer import (
    BAD,
    CHAT,
    ECHO,
    FAIL,
    TICK,
    WAIT,
    Peer,
    ident,
    messages,
    payload_of,
    request,
    run,
    status_of,
)


class VirtualClock(asyncio.SelectorEventLoop):
    """An event loop whose time moves only when the test advances it, so a deadline fires
    exactly when the test says its time is up, however fast the machine runs."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__()

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def pump_until(peer: Peer, done: Callable[[], bool], pumps: int = 10) -> bool:
    """Pump until `done()` (a deadline's answer may be sent a few loop turns after its timer)."""
    for _ in range(pumps):
        if done():
            return True
        await peer.pump()
    return done()


def run_on_virtual_clock(scenario: Callable[[VirtualClock], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=VirtualClock) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, VirtualClock)
        runner.run(scenario(loop))


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
    async def scenario(clock: VirtualClock) -> None:
        peer = Peer()
        stream = peer.call(WAIT, request("slow"), extra=((b"grpc-timeout", b"30m"),))
        quick = peer.call(ECHO, request("quick"), extra=((b"grpc-timeout", b"2S"),))
        await peer.pump()
        assert peer.service.seen == [2.0]  # the handler sees its time remaining: all of it
        assert status_of(peer.reply(quick)) == (0, "")

        def answered() -> bool:
            return peer.reply(stream)["headers"] is not None

        clock.advance(0.02)
        assert not await pump_until(peer, answered)  # 10 ms left: still waiting
        assert peer.service.cancelled == 0
        clock.advance(0.01)
        assert await pump_until(peer, answered)
        assert status_of(peer.reply(stream)) == (Status.DEADLINE_EXCEEDED, "Deadline Exceeded")
        assert peer.service.cancelled == 1

    run_on_virtual_clock(scenario)


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


def test_status_block_and_hpack_literals_decode_with_an_independent_decoder() -> None:

    block = status_block(Status.NOT_FOUND, "x" * 300, headers=True)
    headers = dict(hpack.Decoder().decode(block, raw=True))
    assert headers[b":status"] == b"200"
    assert headers[b"grpc-status"] == b"5"
    assert headers[b"grpc-message"] == b"x" * 300  # a length over 127 needs a multi-byte int
    assert hpack.Decoder().decode(f.hpack_status(415), raw=True) == [(b":status", b"415")]


def test_an_error_after_the_response_headers_comes_as_trailers() -> None:
    """A deadline that fires after a stream's first reply ends it with trailers (no :status),
    which h2 would refuse otherwise."""

    async def scenario(clock: VirtualClock) -> None:
        peer = Peer()
        stream = peer.call(TICK, request("t"), end=False, extra=((b"grpc-timeout", b"50m"),))
        await peer.pump()
        assert [ident(m) for m in messages(peer.reply(stream)["body"])] == ["tick"]
        assert peer.reply(stream)["trailers"] is None  # no time has passed: the call goes on
        clock.advance(0.05)
        assert await pump_until(peer, lambda: peer.reply(stream)["trailers"] is not None)
        reply = peer.reply(stream)
        assert reply["trailers"] is not None and b":status" not in reply["trailers"]
        assert status_of(reply) == (Status.DEADLINE_EXCEEDED, "Deadline Exceeded")

    run_on_virtual_clock(scenario)


def test_a_stream_handler_waits_while_the_client_keeps_its_window_closed() -> None:
    async def scenario() -> None:
        peer = Peer(client_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        peer.service.release.set()
        body = b"".join(request(f"m{i}", b"p" * 10_000) for i in range(200))  # 2 MB
        stream = peer.call(CHAT, body)
        await peer.pump(rounds=200)
        # ~26 replies of 10 KB fill the 256 KiB send buffer; then the handler is held, stops
        # taking requests, and the client's window on its side closes in turn
        assert peer.service.chatted < 60
        assert stream in peer.pending
        peer.client.increment_flow_control_window(1 << 30, stream_id=stream)
        peer.client.increment_flow_control_window(1 << 30)
        for _ in range(40):
            await peer.pump()
        reply = peer.reply(stream)
        assert len(messages(reply["body"])) == 200 and status_of(reply) == (0, "")

    run(scenario)


def test_a_handler_that_returns_no_message_still_ends_its_call() -> None:
    async def scenario() -> None:
        peer = Peer()
        stream = peer.call(BAD, request("b"))
        await peer.pump()
        assert status_of(peer.reply(stream)) == (Status.INTERNAL, "internal error: AttributeError")
        assert peer.server.active_streams == 0

    run(scenario)


def test_unfinished_requests_on_one_connection_are_bounded() -> None:
    async def scenario() -> None:
        peer = Peer(max_message=8_000, max_connection_bytes=10_000)
        half = b"\x00" + (7_000).to_bytes(4, "big") + b"x" * 5_000  # a message still arriving
        first = peer.call(ECHO, half, end=False)
        second = peer.call(ECHO, half, end=False)
        await peer.pump()
        assert peer.reply(first)["headers"] is None  # still waiting for the rest
        code, message = status_of(peer.reply(second))
        assert code == Status.RESOURCE_EXHAUSTED and "more than 10000 bytes" in message
        peer.client.reset_stream(first)
        await peer.pump()
        assert peer.server.buffered == 0
        done = peer.call(ECHO, request("after"))
        await peer.pump()
        assert status_of(peer.reply(done)) == (0, "")

    run(scenario)


def test_content_types_and_compressed_flags() -> None:
    async def scenario() -> None:
        peer = Peer()
        fine = peer.call(ECHO, request("a"), extra=((b"content-type", b"application/grpc+proto"),))
        stream_id = peer.client.get_next_available_stream_id()
        peer.client.send_headers(
            stream_id,
            [(b":method", b"POST"), (b":scheme", b"http"), (b":path", ECHO),
             (b":authority", b"t"), (b"content-type", b"application/grpcx")],
            end_stream=True,
        )  # fmt: skip
        flagged = peer.call(ECHO, b"\x02" + request("c")[1:])
        await peer.pump()
        assert status_of(peer.reply(fine)) == (0, "")
        assert peer.reply(stream_id)["headers"][b":status"] == b"415"
        assert status_of(peer.reply(flagged)) == (
            Status.INTERNAL,
            "invalid compressed flag 2 on a message",
        )

    run(scenario)


def test_long_status_messages_are_cut_to_what_clients_accept() -> None:
    block = status_block(Status.INTERNAL, "é" * 5000, headers=False)
    message = dict(hpack.Decoder().decode(block, raw=True))[b"grpc-message"]
    assert len(message) <= 1024
    assert set(unquote(message.decode())) == {"é"}  # no escape cut in half
