"""Property tests of the HTTP/2 server connection: random frame sequences, random bytes and
mutations of a recorded exchange, in chunks of any size. Whatever arrives, the connection never
raises, never writes after close, ends with nothing after a GOAWAY, writes only frames that parse,
and keeps its windows and buffers within bounds. The frames drawn: tests/h2fuzz_frames.py; the
harness and its checks: tests/h2fuzz.py and tests/h2wire.py."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
from typing import Any

import h2.settings
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from modelport.frontends.grpc.http2 import frames as f
from tests.h2fuzz import (
    LIMITS,
    MAX_CONNECTION_BYTES,
    MAX_MESSAGE,
    Harness,
    LosingTransport,
    held_bytes,
    observed_windows,
    run_example,
)
from tests.h2fuzz_frames import (
    Action,
    Render,
    calls,
    first_settings,
    items,
    stingy_settings,
    weighted,
)
from tests.h2peer import CHAT, ECHO, FAIL, Peer, grpc_statuses, request
from tests.h2wire import ClientView, WireChecker

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # Shrinking a failure takes minutes (past pytest's timeout): H2FUZZ_SHRINK=1 asks for it
    phases=[phase for phase in Phase if phase != Phase.shrink or os.environ.get("H2FUZZ_SHRINK")],
)
SCALE = int(os.environ.get("H2FUZZ_SCALE", "1"))
"""H2FUZZ_SCALE=20 runs twenty times the examples (a longer search than make test's)."""


async def feed_in_chunks(harness: Harness, data: bytes, draw: Any, between: bool) -> None:
    """`data` in chunks cut where `draw` says; loop passes between them when `between`."""
    cuts = sorted(set(draw(st.lists(st.integers(0, max(len(data), 1)), max_size=6))))
    start = 0
    for cut in [*cuts, len(data)]:
        if cut > start:
            harness.feed(data[start:cut])
            start = cut
            if between:
                await harness.turn(draw(st.integers(0, 2)))


@settings(FUZZ, max_examples=1000 * SCALE)
@given(st.data())
def test_random_frame_sequences(data: st.DataObject) -> None:
    opening = data.draw(weighted((9, first_settings), (3, stingy_settings), (1, items)))
    start = data.draw(weighted((4, calls), (1, items)))
    sequence = [opening, start, *data.draw(st.lists(items, min_size=2, max_size=30))]

    async def scenario() -> None:
        harness = Harness()
        render = Render()
        pending = bytearray(f.PREFACE)
        for item in sequence:
            if not isinstance(item, Action):
                pending += item.render(render)
                continue
            await feed_in_chunks(harness, bytes(pending), data.draw, between=True)
            pending.clear()
            if item.name == "turn":
                await harness.turn(item.passes)
            elif item.name == "wait":
                await harness.wait(item.passes)
            elif item.name == "release":
                harness.service.release.set()
            elif item.name == "stop reading":
                harness.stop_reading()
            elif item.name == "start reading":
                harness.start_reading()
            elif not harness.transport.closed:
                harness.shutdown()
        await feed_in_chunks(harness, bytes(pending), data.draw, between=True)
        await harness.finish()

    run_example(scenario)


@settings(FUZZ, max_examples=200 * SCALE)
@given(st.booleans(), st.binary(max_size=300), st.data())
def test_random_bytes_after_the_preface(with_settings: bool, noise: bytes, data: Any) -> None:
    start = f.PREFACE + (f.settings({}) if with_settings else b"")

    async def scenario() -> None:
        harness = Harness()
        await feed_in_chunks(harness, start + noise, data.draw, between=True)
        await harness.finish()

    run_example(scenario)


@settings(FUZZ, max_examples=100 * SCALE)
@given(st.binary(max_size=40), st.data())
def test_random_bytes_instead_of_the_preface(noise: bytes, data: Any) -> None:
    prefix = data.draw(st.integers(0, len(f.PREFACE)))

    async def scenario() -> None:
        harness = Harness()
        await feed_in_chunks(harness, f.PREFACE[:prefix] + noise, data.draw, between=True)
        await harness.finish()

    run_example(scenario)


@functools.cache
def recorded_exchange() -> bytes:
    """What an h2 client sent in a real exchange with the server: unary calls (one padded, one
    failing, one larger than the windows, one with a deadline), a stream of three messages, a
    call it resets, a PING, and SETTINGS changes."""
    sent = bytearray()

    async def record() -> None:
        client_settings = {
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 30_000,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: 20_000,
        }
        peer = Peer(LIMITS, MAX_MESSAGE, client_settings, MAX_CONNECTION_BYTES)
        receive = peer.server.data_received

        def tap(chunk: bytes) -> None:
            sent.extend(chunk)
            receive(chunk)

        peer.server.data_received = tap  # type: ignore[method-assign]
        peer.service.release.set()
        ids = iter(range(1, 100))

        def extra(*more: tuple[bytes, bytes]) -> tuple[tuple[bytes, bytes], ...]:
            return ((b"x-request-id", f"rec-{next(ids)}".encode()), *more)

        peer.call(ECHO, request("a", b"x" * 300), extra=extra())
        peer.call(ECHO, request("b"), pad=9, extra=extra())
        peer.call(FAIL, request("c"), extra=extra())
        await peer.pump()
        peer.call(CHAT, request("d") + request("e") + request("f"), extra=extra())
        peer.client.ping(b"pingpong")
        peer.call(ECHO, request("g", b"y" * 20_000), extra=extra((b"grpc-timeout", b"9S")))
        await peer.pump(rounds=400)
        reset = peer.call(ECHO, request("h", b"z" * 100), end=False, extra=extra())
        await peer.pump()
        peer.client.reset_stream(reset)
        peer.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 70_000})
        peer.client.increment_flow_control_window(100_000)
        peer.call(ECHO, request("i"), extra=extra())
        await peer.pump()
        assert peer.terminated() is None

    asyncio.run(record())
    return bytes(sent)


def frame_offsets(data: bytes) -> list[int]:
    """Where each frame of the recorded exchange starts."""
    offsets, pos = [], len(f.PREFACE)
    while pos + 9 <= len(data):
        offsets.append(pos)
        pos += 9 + int.from_bytes(data[pos : pos + 3], "big")
    return offsets


def mutate(data: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    out = bytearray(data)
    offsets = frame_offsets(data)
    for kind, where, value in mutations:
        if not out:
            break
        pos = where % len(out)
        if kind == "flip":
            out[pos] ^= 1 << (value % 8)
        elif kind == "header":  # a byte of a frame header: length, type, flags or stream
            pos = offsets[where % len(offsets)] + value[0] % 9
            if pos < len(out):
                out[pos] = value[1]
        elif kind == "cut":
            del out[pos:]
        elif kind == "drop":
            del out[pos : pos + value]
        elif kind == "repeat":
            out[pos:pos] = out[pos : pos + value]
        elif kind == "insert":
            out[pos:pos] = value
    return bytes(out)


positions = st.integers(0, 1 << 20)
mutations = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), positions, st.integers(0, 7)),
        st.tuples(st.just("header"), positions, st.tuples(st.integers(0, 8), st.integers(0, 255))),
        st.tuples(st.just("header"), positions, st.tuples(st.integers(0, 8), st.integers(0, 255))),
        st.tuples(st.just("cut"), positions, st.none()),
        st.tuples(st.just("drop"), positions, st.integers(1, 16)),
        st.tuples(st.just("repeat"), positions, st.integers(1, 200)),
        st.tuples(st.just("insert"), positions, st.binary(min_size=1, max_size=12)),
    ),
    min_size=1,
    max_size=4,
)


@settings(FUZZ, max_examples=800 * SCALE)
@given(mutations, st.booleans(), st.data())
def test_mutations_of_a_recorded_exchange(changes: Any, keep_preface: bool, data: Any) -> None:
    exchange = recorded_exchange()
    mutated = mutate(exchange, changes)
    if keep_preface:
        mutated = f.PREFACE + mutated[len(f.PREFACE) :]

    async def scenario() -> None:
        harness = Harness()
        harness.service.release.set()
        await feed_in_chunks(harness, mutated, data.draw, between=True)
        await harness.finish()

    run_example(scenario)


def answer_to(chunks: list[bytes]) -> bytes:
    """The server's whole output for the chunks, fed without a loop pass between them."""
    out: list[bytes] = []

    async def scenario() -> None:
        harness = Harness()
        harness.service.release.set()
        for chunk in chunks:
            harness.feed(chunk)
        await harness.turn(20)
        out.append(bytes(harness.transport.out))
        await harness.finish()

    run_example(scenario)
    return out[0]


@settings(FUZZ, max_examples=60 * SCALE)
@given(st.lists(st.integers(0, 1 << 20), min_size=1, max_size=40))
def test_how_the_bytes_are_split_does_not_change_the_answer(cuts: list[int]) -> None:
    exchange = recorded_exchange()
    points = sorted({cut % len(exchange) for cut in cuts} | {0, len(exchange)})
    chunks = [exchange[a:b] for a, b in itertools.pairwise(points)]
    assert answer_to(chunks) == answer_to([exchange])


def test_the_recorded_exchange_is_answered_in_full() -> None:
    """The exchange the mutations start from reaches every call: all answered OK but the failing
    one (INVALID_ARGUMENT) and the one the client reset, and no GOAWAY."""
    out = answer_to([recorded_exchange()])
    assert grpc_statuses(out) == {1: 0, 3: 0, 5: 3, 7: 0, 9: 0, 13: 0}
    checker = WireChecker()
    client = ClientView(LIMITS.max_frame_size)
    client.feed(recorded_exchange())
    checker.check(out, client)
    kinds = {kind for kind, _, _, _ in checker.frames}
    assert f.FrameType.GOAWAY not in kinds
    assert {f.FrameType.DATA, f.FrameType.WINDOW_UPDATE, f.FrameType.PING} <= kinds


def test_the_harness_still_sees_the_connection() -> None:
    """The window and memory checks read the connection's private attributes by name: if they
    were renamed, the checks would pass without checking anything."""

    async def scenario() -> None:
        harness = Harness()
        harness.feed(recorded_exchange()[:200])
        names = {name for name, *_ in observed_windows(harness.connection)}
        assert {"receive connection", "send connection", "receive stream 1"} <= names
        held = {name for name, *_ in held_bytes(harness.connection)}
        assert {"read buffer", "request bytes still arriving", "queued for the peer"} <= held
        await harness.finish()

    run_example(scenario)


def test_a_write_after_close_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The transport fails a write after close (here: a connection misled into writing on a
    closed transport, as one that forgot to check would)."""
    monkeypatch.setattr(LosingTransport, "is_closing", lambda self: False)

    async def scenario() -> None:
        harness = Harness()
        harness.feed(f.PREFACE + f.settings({}))
        # the client's GOAWAY with no call open closes the transport; a PING answer queued
        # afterwards (as a connection that forgot to stop would queue it) must not be written
        harness.feed(f.goaway(0, f.ErrorCode.NO_ERROR))
        harness.connection._write(f.frame(f.FrameType.PING, 1, 0, bytes(8)))
        harness.connection._flush()

    with pytest.raises(AssertionError, match="write after close"):
        run_example(scenario)


def test_the_wire_checker_refuses_what_a_server_must_not_send() -> None:
    answer = f.frame(f.FrameType.HEADERS, 4, 1, b"\x88")  # :status 200 on stream 1
    bad = [
        ("after a GOAWAY", f.goaway(0, f.ErrorCode.PROTOCOL_ERROR) + f.frame(6, 1, 0, bytes(8))),
        ("a server never sends", f.frame(f.FrameType.PRIORITY, 0, 1, bytes(5))),
        ("a 16385-byte frame", f.frame(f.FrameType.SETTINGS, 0, 0, bytes(16_385))),
        ("a stream the client did not open", f.frame(f.FrameType.HEADERS, 4, 3, b"\x88")),
        ("of connection window", answer + f.frame(f.FrameType.DATA, 0, 1, bytes(16_000)) * 5),
        ("DATA before response headers", f.frame(f.FrameType.DATA, 0, 1, b"x")),
        ("after the stream ended", f.rst_stream(1, f.ErrorCode.CANCEL) + answer),
    ]
    for message, frames in bad:
        client = ClientView(LIMITS.max_frame_size)
        client.feed(f.PREFACE + f.frame(f.FrameType.HEADERS, 4, 1, b""))
        with pytest.raises(AssertionError, match=message):
            WireChecker().check(f.settings({}) + frames, client)


def test_a_goaway_with_an_error_must_close_the_transport() -> None:
    async def scenario() -> None:
        harness = Harness()
        harness.feed(f.PREFACE + f.settings({}))
        harness.transport.out += f.goaway(0, f.ErrorCode.PROTOCOL_ERROR)
        harness.check()

    with pytest.raises(AssertionError, match="transport still open"):
        run_example(scenario)
