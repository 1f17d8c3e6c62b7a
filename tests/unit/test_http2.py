"""HTTP/2 connections (frames, flow control, HPACK, limits, shutdown), checked against h2's client
state machine through tests/h2peer.py."""

from __future__ import annotations

import asyncio
import struct

import h2.events
import h2.settings
import pytest

from modelport.frontends.grpc.http2 import frames as f
from modelport.frontends.grpc.http2.connection import Connection
from modelport.frontends.grpc.http2.limits import Http2Limits
from modelport.frontends.grpc.rpc import Dispatcher
from tests.h2peer import (
    ECHO,
    FAIL,
    WAIT,
    FakeTransport,
    Peer,
    grpc_statuses,
    ident,
    messages,
    payload_of,
    raw_frames,
    raw_peer,
    request,
    request_block,
    run,
    status_of,
)


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
        peer = raw_peer()
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
        (f.frame(f.FrameType.GOAWAY, 0, 0, b"\0\0\0"), f.ErrorCode.FRAME_SIZE_ERROR),
        (f.frame(f.FrameType.PRIORITY, 0, 9, b"\0"), f.ErrorCode.FRAME_SIZE_ERROR),  # idle
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
        "goaway-size",
        "priority-idle",
        "oversized-frame",
    ],
)
def test_protocol_violations_end_the_connection_with_goaway(frame: bytes, code: int) -> None:
    async def scenario() -> None:
        peer = raw_peer()
        peer.server.data_received(frame)
        await asyncio.sleep(0)
        goaway = peer.transport.out.rfind(b"\x07\x00\x00\x00\x00\x00")
        assert goaway > 0, "no GOAWAY frame"
        assert struct.unpack_from(">I", peer.transport.out, goaway + 10)[0] == code
        assert peer.transport.closed

    run(scenario)


def test_flow_control_violation_on_a_stream_resets_only_that_stream() -> None:
    async def scenario() -> None:
        peer = raw_peer(Http2Limits(stream_window=100))
        block = request_block(peer, ECHO)
        peer.server.data_received(f.frame(f.FrameType.HEADERS, 4, 1, block))
        peer.server.data_received(f.frame(f.FrameType.DATA, 0, 1, b"\0" * 101))
        await asyncio.sleep(0)
        assert f.rst_stream(1, f.ErrorCode.FLOW_CONTROL_ERROR) in peer.transport.out
        assert not peer.transport.closed

    run(scenario)


def test_continuation_frames_and_too_many_streams() -> None:
    async def scenario() -> None:
        peer = raw_peer(Http2Limits(max_concurrent_streams=1))
        block = request_block(peer, WAIT)
        peer.server.data_received(
            f.frame(f.FrameType.HEADERS, 0, 1, block[:3])
            + f.frame(f.FrameType.CONTINUATION, 0, 1, block[3:6])
            + f.frame(f.FrameType.CONTINUATION, 4, 1, block[6:])
        )
        assert peer.server.active_streams == 1
        again = request_block(peer, ECHO)
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
        assert transport.out == b""  # our SETTINGS wait for the client's HTTP/2 preface
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


ACK = f.frame(f.FrameType.SETTINGS, f.Flag.ACK, 0)


def test_bad_settings_are_not_acknowledged() -> None:
    async def scenario() -> None:
        peer = raw_peer()
        acks = bytes(peer.transport.out).count(ACK)  # the client's first SETTINGS
        peer.server.data_received(f.settings({f.Setting.MAX_FRAME_SIZE: 100}))
        assert bytes(peer.transport.out).count(ACK) == acks
        assert peer.transport.closed

    run(scenario)


def test_a_settings_change_cannot_push_an_open_stream_window_over_the_limit() -> None:
    async def scenario() -> None:
        peer = raw_peer()
        peer.server.data_received(f.frame(f.FrameType.HEADERS, 4, 1, request_block(peer, WAIT)))
        peer.server.data_received(f.window_update(1, 2**31 - 1 - f.DEFAULT_WINDOW))
        assert not peer.transport.closed  # exactly at the limit: fine
        peer.server.data_received(f.settings({f.Setting.INITIAL_WINDOW_SIZE: 70_000}))
        [goaway] = [p for kind, _, _, p in raw_frames(bytes(peer.transport.out)) if kind == 7]
        assert struct.unpack(">II", goaway[:8])[1] == f.ErrorCode.FLOW_CONTROL_ERROR

    run(scenario)


def test_a_new_stream_id_below_an_earlier_one_ends_the_connection() -> None:
    async def scenario() -> None:
        peer = raw_peer()
        peer.server.data_received(f.frame(f.FrameType.HEADERS, 4, 5, request_block(peer, WAIT)))
        peer.server.data_received(f.frame(f.FrameType.HEADERS, 4, 3, request_block(peer, WAIT)))
        [goaway] = [p for kind, _, _, p in raw_frames(bytes(peer.transport.out)) if kind == 7]
        assert struct.unpack(">II", goaway[:8]) == (5, f.ErrorCode.PROTOCOL_ERROR)

    run(scenario)


def test_limits_are_checked_and_a_default_connection_window_needs_no_update() -> None:
    with pytest.raises(ValueError, match="connection_window"):
        Http2Limits(connection_window=1000)

    async def scenario() -> None:
        peer = raw_peer(Http2Limits(connection_window=f.DEFAULT_WINDOW))
        kinds = [kind for kind, _, _, _ in raw_frames(bytes(peer.transport.out))]
        assert f.FrameType.WINDOW_UPDATE not in kinds

    run(scenario)


def test_after_our_goaway_the_last_stream_id_stays_put() -> None:
    async def scenario() -> None:
        peer = raw_peer()
        peer.server.data_received(f.frame(f.FrameType.HEADERS, 4, 1, request_block(peer, WAIT)))
        peer.server.shutdown()
        peer.server.data_received(f.frame(f.FrameType.HEADERS, 4, 3, request_block(peer, WAIT)))
        peer.server.data_received(f.frame(f.FrameType.DATA, 0, 0, b"x"))  # a violation
        goaways = [p for kind, _, _, p in raw_frames(bytes(peer.transport.out)) if kind == 7]
        assert [struct.unpack(">I", g[:4])[0] for g in goaways] == [1, 1]

    run(scenario)


def test_shutdown_before_the_preface_just_closes() -> None:
    async def scenario() -> None:
        connection = Connection(Dispatcher({}, 1000), Http2Limits())
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.shutdown()
        await asyncio.sleep(0)
        assert transport.closed and transport.out == b""

    run(scenario)
