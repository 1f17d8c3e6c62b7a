"""The HTTP/2 server's defences against hostile clients (issue 19): frame work and reset budgets,
ping strikes, header-list rules, the connection cap, the watchdog's timeouts, and the memory
budgets for requests still arriving and answers waiting for windows. Each attack is followed
by a well-behaved call, on the same connection where it survives, or on a second one."""

from __future__ import annotations

import asyncio
import gc
import gzip
import struct
import threading

import pytest
from google.protobuf.wrappers_pb2 import BytesValue

from modelport.frontends import compression
from modelport.frontends.budgets import ByteBudget, ConnectionCap
from modelport.frontends.grpc.http2 import frames as f
from modelport.frontends.grpc.http2.connection import Shared
from modelport.frontends.grpc.http2.limits import Http2Limits
from tests.h2peer import (
    CHAT,
    ECHO,
    WAIT,
    Peer,
    grpc_statuses,
    raw_frames,
    raw_peer,
    request,
    request_block,
    run,
    status_of,
)

PING = f.frame(f.FrameType.PING, 0, 0, b"12345678")
BIG_MESSAGE_START = f.frame(f.FrameType.DATA, 0, 1, b"\x00\x00\x10\x00\x00")
"""DATA on stream 1 that starts a 1 MiB message: the call stays open for the bytes to come."""


def goaway_of(peer: Peer) -> tuple[int, bytes] | None:
    """The code and debug data of the server's GOAWAY, if it sent one."""
    for kind, _, _, payload in raw_frames(bytes(peer.transport.out)):
        if kind == f.FrameType.GOAWAY:
            return struct.unpack(">I", payload[4:8])[0], payload[8:]
    return None


async def served(peer: Peer | None = None, limits: Http2Limits | None = None) -> None:
    """A well-behaved call on `peer`, or on a fresh connection, succeeds."""
    peer = peer or Peer(limits)
    stream = peer.call(ECHO, request("fine", b"x"))
    await peer.pump()
    assert status_of(peer.reply(stream)) == (0, "")


def headers_frame(peer: Peer, stream: int, path: bytes = WAIT, end: bool = False) -> bytes:
    flags = f.Flag.END_HEADERS | (f.Flag.END_STREAM if end else 0)
    return f.frame(f.FrameType.HEADERS, flags, stream, request_block(peer, path))


def test_rapid_reset_with_data_ends_the_connection() -> None:
    """HEADERS + 1-byte DATA + RST_STREAM cycles: DATA no longer refills any budget."""

    async def scenario() -> None:
        limits = Http2Limits(resets=50, resets_per_second=0.001)
        refused: list[str] = []
        peer = raw_peer(limits, Shared(limits, refused=refused.append))
        stream = 1
        for _ in range(60):
            peer.server.data_received(
                headers_frame(peer, stream)
                + f.frame(f.FrameType.DATA, 0, stream, b"\x00")
                + f.rst_stream(stream, f.ErrorCode.CANCEL)
            )
            stream += 2
        assert goaway_of(peer) == (f.ErrorCode.ENHANCE_YOUR_CALM, b"too many streams reset")
        assert peer.transport.closed
        assert refused == ["resets"]  # counted in modelport_transport_refused
        await served(limits=limits)

    run(scenario)


def test_rapid_reset_without_data_and_refused_streams_spend_the_same_budget() -> None:
    async def scenario() -> None:
        limits = Http2Limits(resets=20, resets_per_second=0.001, max_concurrent_streams=1)
        peer = raw_peer(limits)
        peer.server.data_received(headers_frame(peer, 1))  # holds the only stream slot
        for stream in range(3, 3 + 2 * 10, 2):  # refused: REFUSED_STREAM, ten resets spent
            peer.server.data_received(headers_frame(peer, stream))
        assert goaway_of(peer) is None
        for stream in range(23, 23 + 2 * 11, 2):
            peer.server.data_received(f.rst_stream(1, 0) + headers_frame(peer, stream))
        assert goaway_of(peer) is not None
        assert goaway_of(peer)[0] == f.ErrorCode.ENHANCE_YOUR_CALM  # type: ignore[index]

    run(scenario)


def test_reconnecting_does_not_refill_the_reset_budget() -> None:
    async def scenario() -> None:
        limits = Http2Limits(resets=30, resets_per_second=0.001)
        shared = Shared(limits)
        stream, ended = 1, 0
        for _ in range(5):  # five connections from one address, ten resets each
            peer = raw_peer(limits, shared)
            for _ in range(10):
                peer.server.data_received(
                    headers_frame(peer, stream) + f.rst_stream(stream, f.ErrorCode.CANCEL)
                )
                stream += 2
            ended += goaway_of(peer) is not None
        assert ended >= 2  # the budget ran out during the third connection
        refused = Peer(limits, shared=shared)  # the address is turned away for now
        assert refused.transport.closed
        assert goaway_of(refused) == (
            f.ErrorCode.ENHANCE_YOUR_CALM,
            b"this client address has used up its budget; try again later",
        )
        await served(Peer(limits, shared=shared, address="127.0.0.9"))  # other addresses: fine

    run(scenario)


def test_pings_between_tiny_data_frames_end_the_connection() -> None:
    """A flood of frames that carry no complete message: one unit each, no refill but time."""

    async def scenario() -> None:
        limits = Http2Limits(frame_units=500, frame_units_per_second=0.001)
        peer = raw_peer(limits)
        peer.server.data_received(headers_frame(peer, 1) + BIG_MESSAGE_START)  # a call open
        for _ in range(300):
            peer.server.data_received(PING + f.frame(f.FrameType.DATA, 0, 1, b"\x00"))
        assert goaway_of(peer) == (
            f.ErrorCode.ENHANCE_YOUR_CALM,
            b"too many frames for the calls they carry",
        )
        await served(limits=limits)

    run(scenario)


def test_a_settings_frame_costs_one_unit_per_setting() -> None:
    async def scenario() -> None:
        limits = Http2Limits(frame_units=1000, frame_units_per_second=0.001)
        peer = raw_peer(limits)
        peer.transport.out.clear()  # our SETTINGS and the ACK of the client's
        huge = f.frame(f.FrameType.SETTINGS, 0, 0, struct.pack(">HI", 0x99, 1) * 2000)
        peer.server.data_received(huge)
        assert goaway_of(peer) is not None
        kinds = [kind for kind, _, _, _ in raw_frames(bytes(peer.transport.out))]
        assert kinds == [f.FrameType.GOAWAY]  # refused before any work was done on it
        await served(limits=limits)

    run(scenario)


def test_completed_calls_earn_frame_units_back() -> None:
    async def scenario() -> None:
        limits = Http2Limits(frame_units=100, frame_units_per_second=0.001, call_units=8)
        peer = Peer(limits)
        for index in range(60):  # each call: HEADERS + DATA + a PING; well within what it earns
            stream = peer.call(ECHO, request(str(index)))
            peer.client.ping(b"%08d" % index)
            await peer.pump()
            assert status_of(peer.reply(stream)) == (0, "")
        assert peer.terminated() is None

    run(scenario)


def test_keepalive_pings_without_calls_are_limited() -> None:
    async def scenario() -> None:
        peer = raw_peer(Http2Limits(ping_interval=60))
        peer.server.data_received(PING * 3)  # the first, then two strikes: still allowed
        assert goaway_of(peer) is None
        peer.server.data_received(PING)
        assert goaway_of(peer) == (f.ErrorCode.ENHANCE_YOUR_CALM, b"too_many_pings")

        peer = raw_peer(Http2Limits(ping_interval=60))
        peer.server.data_received(headers_frame(peer, 1))  # with a call open, pings are free
        peer.server.data_received(PING * 50)
        assert goaway_of(peer) is None

    run(scenario)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param([(b":method", b"POST"), (b":method", b"POST")], id="duplicate-pseudo"),
        pytest.param([(b"X-Upper", b"1")], id="uppercase"),
        pytest.param([(b"connection", b"keep-alive")], id="connection-specific"),
        pytest.param([(b"te", b"gzip")], id="te-not-trailers"),
        pytest.param([(b":status", b"200")], id="response-pseudo"),
        pytest.param([(b"x-value", b"a\r\nb")], id="crlf-in-value"),
        pytest.param([(b"x-value", b" padded")], id="edge-whitespace"),
    ],
)
def test_malformed_header_lists_reset_only_their_stream(fields: list[tuple[bytes, bytes]]) -> None:
    async def scenario() -> None:
        peer = raw_peer()
        base = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", ECHO),
            (b"content-type", b"application/grpc"),
        ]
        pseudo = [field for field in fields if field[0].startswith(b":")]
        regular = [field for field in fields if not field[0].startswith(b":")]
        block = peer.client.encoder.encode(base[:3] + pseudo + base[3:] + regular)
        peer.server.data_received(f.frame(f.FrameType.HEADERS, 5, 1, block))
        await asyncio.sleep(0)
        assert f.rst_stream(1, f.ErrorCode.PROTOCOL_ERROR) in peer.transport.out
        assert goaway_of(peer) is None
        peer.server.data_received(
            headers_frame(peer, 3, ECHO) + f.frame(f.FrameType.DATA, 1, 3, request("ok"))
        )
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert grpc_statuses(bytes(peer.transport.out)) == {3: 0}

    run(scenario)


def test_a_pseudo_header_after_a_regular_field_or_a_missing_path_is_malformed() -> None:
    async def scenario() -> None:
        peer = raw_peer()
        late = [(b":method", b"POST"), (b":scheme", b"http"), (b"a", b"1"), (b":path", ECHO)]
        missing = [(b":method", b"POST"), (b":scheme", b"http")]
        for stream, fields in ((1, late), (3, missing)):
            block = peer.client.encoder.encode(fields)
            peer.server.data_received(f.frame(f.FrameType.HEADERS, 5, stream, block))
            assert f.rst_stream(stream, f.ErrorCode.PROTOCOL_ERROR) in peer.transport.out

    run(scenario)


def test_connections_past_the_cap_are_told_why_and_closed() -> None:
    async def scenario() -> None:
        limits = Http2Limits()
        cap = ConnectionCap(1)
        refused: list[str] = []
        shared = Shared(limits, connections=cap, refused=refused.append)
        first = Peer(limits, shared=shared)
        second = Peer(limits, shared=shared)
        assert second.transport.closed and cap.refused == 1 and refused == ["connections"]
        assert goaway_of(second) == (
            f.ErrorCode.ENHANCE_YOUR_CALM,
            b"the server is at its connection limit",
        )
        await served(first)
        first.server.connection_lost(None)
        assert cap.open == 0
        await served(Peer(limits, shared=shared))

    run(scenario)


def test_a_client_that_never_sends_its_preface_or_settings_is_closed() -> None:
    async def scenario() -> None:
        limits = Http2Limits(preface_timeout=0.1)
        silent = Peer(limits)  # connected, nothing sent
        preface_only = Peer(limits)
        preface_only.server.data_received(f.PREFACE)
        await asyncio.sleep(0.35)
        assert silent.transport.closed and preface_only.transport.closed
        await served(limits=limits)

    run(scenario)


def test_a_frame_dripped_byte_by_byte_is_cut_off() -> None:
    async def scenario() -> None:
        limits = Http2Limits(stall_timeout=0.2)
        peer = raw_peer(limits)
        frame = headers_frame(peer, 1, ECHO)
        for byte in range(len(frame) - 1):  # never the last byte, one every 50 ms
            if peer.transport.closed:
                break
            peer.server.data_received(frame[byte : byte + 1])
            await asyncio.sleep(0.05)
        assert peer.transport.closed
        assert goaway_of(peer) == (f.ErrorCode.ENHANCE_YOUR_CALM, b"a frame stalled half received")
        await served(limits=limits)

    run(scenario)


def test_idle_connections_are_sent_away() -> None:
    async def scenario() -> None:
        limits = Http2Limits(idle_timeout=0.2)
        peer = Peer(limits)
        await served(peer)
        await asyncio.sleep(0.25)
        assert not peer.transport.closed  # not yet: idle is counted from the last call
        await asyncio.sleep(0.5)
        assert peer.transport.closed
        assert goaway_of(peer) == (f.ErrorCode.NO_ERROR, b"")

    run(scenario)


def test_a_client_that_takes_no_answers_is_cut_off_and_its_memory_freed() -> None:
    async def scenario() -> None:
        limits = Http2Limits(stall_timeout=0.2)
        answers = ByteBudget(1 << 30)
        peer = Peer(limits, shared=Shared(limits, answers=answers))
        peer.acknowledge = False  # the client's windows stay shut
        peer.call(ECHO, request("big", b"x" * 200_000))
        await peer.pump()
        assert answers.held > 100_000  # the part of the answer the window did not let out
        await asyncio.sleep(0.5)
        assert peer.transport.closed  # aborted: a close would wait for the peer to read
        peer.server.connection_lost(None)  # what the event loop's transport calls next
        assert answers.held == 0
        await served(limits=limits)

    run(scenario)


def test_answers_waiting_for_windows_are_bounded_per_connection_and_server() -> None:
    async def scenario() -> None:
        limits = Http2Limits(max_connection_bytes=300_000)
        answers = ByteBudget(1 << 30)
        peer = Peer(limits, shared=Shared(limits, answers=answers))
        peer.acknowledge = False
        first = peer.call(ECHO, request("a", b"x" * 200_000))  # one may always wait
        second = peer.call(ECHO, request("b", b"x" * 200_000))  # over the connection's share
        await peer.pump()
        assert status_of(peer.reply(second))[0] == 8  # RESOURCE_EXHAUSTED
        assert peer.reply(first)["trailers"] is None  # still waiting for the window

        small = ByteBudget(100_000)
        other = Peer(limits, shared=Shared(limits, answers=small))
        other.acknowledge = False
        refused = other.call(ECHO, request("c", b"x" * 200_000))  # over the server's budget
        await other.pump()
        assert status_of(other.reply(refused))[0] == 8
        assert small.held == 0
        await served(other)  # a small answer needs no waiting: still served

    run(scenario)


def test_requests_still_arriving_are_bounded_server_wide() -> None:
    async def scenario() -> None:
        pending = ByteBudget(150_000)
        peers = [Peer(pending=pending) for _ in range(2)]
        message = request("big", b"x" * 120_000)
        streams = [peer.call(ECHO, message[:-1], end=False) for peer in peers]
        for peer in peers:
            await peer.pump()
        assert peers[0].reply(streams[0])["headers"] is None  # still arriving
        code, text = status_of(peers[1].reply(streams[1]))
        assert code == 14 and "still arriving" in text  # UNAVAILABLE
        assert pending.held < 150_000
        await served(Peer(pending=pending))  # small requests still fit

    run(scenario)


def test_a_request_message_that_stalls_half_sent_is_ended() -> None:
    async def scenario() -> None:
        pending = ByteBudget(1 << 30)
        peer = Peer(Http2Limits(stall_timeout=0.2), pending=pending)
        message = request("slow", b"x" * 50_000)
        stream = peer.call(ECHO, message[:30_000], end=False)
        await peer.pump()
        assert pending.held > 0
        await asyncio.sleep(0.45)
        await peer.pump()
        code, text = status_of(peer.reply(stream))
        assert code == 4 and "stalled" in text  # DEADLINE_EXCEEDED
        assert pending.held == 0
        await served(peer)

    run(scenario)


def test_cancelled_calls_are_freed_without_a_garbage_collection() -> None:
    async def scenario() -> None:
        peer = raw_peer(Http2Limits(resets=10_000))
        gc.collect()
        gc.disable()
        try:
            stream = 1
            for _ in range(200):  # streaming calls start a task at once; each is cancelled
                peer.server.data_received(
                    headers_frame(peer, stream, CHAT) + f.rst_stream(stream, f.ErrorCode.CANCEL)
                )
                stream += 2
                await asyncio.sleep(0)
            for _ in range(5):
                await asyncio.sleep(0)
            leftover = gc.collect()
        finally:
            gc.enable()
        assert leftover < 200  # before: every cancelled call stayed in a cycle (thousands)

    run(scenario)


def test_large_compressed_messages_are_inflated_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gzip bomb is inflated in a worker thread (and still stopped at the message limit),
    a small compressed message on the loop: no thread hop for it."""
    threads: list[str] = []
    finish = compression._Inflation.finish

    def watched(self: compression._Inflation) -> bytes:
        threads.append(threading.current_thread().name)
        return finish(self)

    monkeypatch.setattr(compression._Inflation, "finish", watched)

    async def scenario() -> None:
        peer = Peer(max_message=4 << 20)
        gzip_field = ((b"grpc-encoding", b"gzip"),)
        small_body = BytesValue(value=b"id:small").SerializeToString()
        small = peer.call(ECHO, b"\x01" + _framed(gzip.compress(small_body)), extra=gzip_field)
        bomb = peer.call(
            ECHO, b"\x01" + _framed(gzip.compress(b"\x00" * (64 << 20))), extra=gzip_field
        )
        for _ in range(50):
            await peer.pump()
            if peer.reply(bomb)["trailers"] or peer.reply(bomb)["headers"]:
                break
            await asyncio.sleep(0.02)
        assert status_of(peer.reply(small)) == (0, "")
        code, text = status_of(peer.reply(bomb))
        assert code == 8 and "exceeds the limit" in text  # RESOURCE_EXHAUSTED
        assert threads and threading.main_thread().name not in threads

    run(scenario)


def _framed(compressed: bytes) -> bytes:
    """A message's length prefix and body (the compressed flag byte goes before it)."""
    return len(compressed).to_bytes(4, "big") + compressed


def test_a_burst_of_frames_is_handled_over_several_passes_of_the_loop() -> None:
    async def scenario() -> None:
        peer = raw_peer(Http2Limits(frames_per_pass=10))
        peer.server.data_received(headers_frame(peer, 1))  # a call open: pings are not strikes
        peer.transport.out.clear()
        peer.server.data_received(PING * 25)
        acks = [k for k, _, _, _ in raw_frames(bytes(peer.transport.out)) if k == f.FrameType.PING]
        assert len(acks) == 10 and not peer.transport.reading  # the rest waits its turn
        for _ in range(5):
            await asyncio.sleep(0)
        acks = [k for k, _, _, _ in raw_frames(bytes(peer.transport.out)) if k == f.FrameType.PING]
        assert len(acks) == 25 and peer.transport.reading

    run(scenario)


def test_a_settings_frame_with_too_many_settings_is_refused_unread() -> None:
    async def scenario() -> None:
        peer = raw_peer(Http2Limits(max_settings=64))
        peer.server.data_received(
            f.frame(f.FrameType.SETTINGS, 0, 0, struct.pack(">HI", 0x99, 1) * 65)
        )
        assert goaway_of(peer) == (f.ErrorCode.ENHANCE_YOUR_CALM, b"SETTINGS frame too large")

    run(scenario)


def test_frame_work_is_kept_per_client_address_across_connections() -> None:
    async def scenario() -> None:
        limits = Http2Limits(frame_units=200, frame_units_per_second=0.001)
        shared = Shared(limits)
        first = raw_peer(limits, shared)
        first.server.data_received(headers_frame(first, 1) + BIG_MESSAGE_START)
        for _ in range(150):
            first.server.data_received(PING + f.frame(f.FrameType.DATA, 0, 1, b"\x00"))
        assert goaway_of(first) == (
            f.ErrorCode.ENHANCE_YOUR_CALM,
            b"too many frames for the calls they carry",
        )
        again = raw_peer(limits, shared)  # reconnecting does not start afresh
        assert again.transport.closed
        await served(Peer(limits, shared=shared, address="127.0.0.9"))

    run(scenario)
