"""The harness of the property-based HTTP/2 tests (tests/unit/test_http2_fuzz.py).

A server Connection on a transport that loses the connection the way asyncio's do, fed bytes
chunk by chunk; after every chunk and every pass of the loop the checks here run:

- every byte the server wrote parses as HTTP/2 frames a server may send (tests/h2wire.py: types,
  sizes within the client's SETTINGS_MAX_FRAME_SIZE, flags, stream ids, header blocks that
  decode), DATA stays within the flow-control credit the client gave, and nothing follows a
  GOAWAY with an error;
- a GOAWAY with an error closes the transport at once, and nothing is written after a close
  (FakeTransport fails such a write);
- the connection's windows and the bytes it holds stay within bounds, and its byte counts agree
  with each other and are back at zero once the connection is lost (`observed_windows`,
  `held_bytes`, `accounts`: the only code that reads the connection's private attributes);
- once the connection is lost, no task of its calls is left running.

Each example runs in a fresh event loop (`run_example`) that records every task and every error
the loop reports; tasks still pending at the end are cancelled and awaited. The loop's clock moves
only when told (`Harness.wait`), so timeouts fire the same way in every run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from google.protobuf.wrappers_pb2 import BytesValue
from hypothesis import event
from hypothesis.control import currently_in_test_context

from modelport.core.errors import InvalidInput
from modelport.frontends.grpc.http2 import frames as f
from modelport.frontends.grpc.http2.connection import Connection
from modelport.frontends.grpc.http2.limits import Http2Limits
from modelport.frontends.grpc.rpc import Dispatcher, Method
from tests.h2peer import FakeTransport, Service
from tests.h2wire import ClientView, WireChecker

BIG = b"/t.S/Big"
BIG_REPLY = 60_000  # more than the default window: answers wait, two pass the memory budget
MAX_MESSAGE = 48 << 10
MAX_CONNECTION_BYTES = 96 << 10


def small_limits(**values: Any) -> Http2Limits:
    """Http2Limits with those of `values` it has (the connection's limits are still changing)."""
    known = {field.name for field in dataclasses.fields(Http2Limits)}
    return Http2Limits(**{name: value for name, value in values.items() if name in known})


LIMITS = small_limits(
    max_concurrent_streams=6,
    stream_window=8192,
    connection_window=f.DEFAULT_WINDOW,
    max_header_list_size=4096,
    max_header_block=8192,
    frame_units=80,
    frame_units_per_second=0.0,  # budgets that refill with time only: the same every run
    call_units=4.0,
    resets=6,
    resets_per_second=0.0,
    max_connection_bytes=MAX_CONNECTION_BYTES,
)
"""Small, so that short random sequences reach every limit."""
MAX = f.MAX_WINDOW
OUTBOUND_PER_STREAM = (256 << 10) + MAX_MESSAGE + 5
"""What one stream may have queued for the peer: a streaming handler waits past 256 KiB
(sender.STREAM_SEND_BUFFER), and one reply more may be on its way."""
LARGEST_ANSWER = max(BIG_REPLY, MAX_MESSAGE) + 64
"""The test service's largest answer (Echo's can be as large as a request), framed."""
_NO_DIGITS = str.maketrans("", "", "0123456789")


class FuzzService(Service):
    """tests/h2peer's test methods, and one with a large answer to a small request. Fail does
    not quote the request (mutated bytes need not decode): a handler raising anything but a
    ModelportError is a bug that run_example reports."""

    async def big(self, request: BytesValue, call: Any) -> BytesValue:
        return BytesValue(value=b"b" * BIG_REPLY)

    async def fail(self, request: BytesValue, call: Any) -> BytesValue:
        raise InvalidInput(f"bad input of {len(request.value)} bytes")

    def methods(self) -> dict[bytes, Method]:
        return {**super().methods(), BIG: Method(BytesValue, False, self.big)}


class LosingTransport(FakeTransport):
    """FakeTransport (it fails a write after close) that, as asyncio's transports do, tells the
    protocol that the connection is lost on the loop's next pass after close or abort."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._protocol = protocol
        self.lost = False
        self.reading_peer = True  # False while the client "stops reading" (pause_writing)

    def close(self) -> None:
        if not self.closed:
            super().close()
            asyncio.get_running_loop().call_soon(self.lose)

    abort = close

    def lose(self, exc: Exception | None = None) -> None:
        if not self.lost:
            self.closed = self.lost = True
            self._protocol.connection_lost(exc)

    def get_write_buffer_size(self) -> int:
        return 0 if self.reading_peer else len(self.out)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40_000) if name == "peername" else default


def observed_windows(connection: Connection) -> list[tuple[str, int, int, int]]:
    """(name, value, lowest allowed, highest allowed) of each flow-control window of the
    connection that can be read. The one place that reads their private names: when the
    connection renames them, change this (test_the_harness_still_sees_the_connection fails)."""
    limits: Http2Limits = getattr(connection, "_limits", LIMITS)
    out = []
    window = getattr(connection, "_recv_window", None)
    unacked = getattr(connection, "_recv_unacked", 0)
    if isinstance(window, int):
        out.append(("receive connection", window, 0, limits.connection_window))
        out.append(("receive connection + unacked", window + unacked, 0, limits.connection_window))
    sender = getattr(connection, "_sender", None)
    if isinstance(getattr(sender, "window", None), int):
        out.append(("send connection", sender.window, 0, MAX))
    for stream_id, stream in getattr(connection, "_streams", {}).items():
        name = f"stream {stream_id}"
        out.append((f"receive {name}", stream.recv_window, 0, limits.stream_window))
        total = stream.recv_window + stream.recv_unacked
        out.append((f"receive {name} + unacked", total, 0, limits.stream_window))
        out.append((f"send {name}", stream.send_window, -MAX, MAX))  # SETTINGS may lower it
    return out


def held_bytes(connection: Connection) -> list[tuple[str, int, int]]:
    """(name, bytes, most allowed) of what the connection holds in memory (as above: the one
    place reading private names)."""
    limits: Http2Limits = getattr(connection, "_limits", LIMITS)
    out = []
    buffer = getattr(connection, "_buffer", None)
    if buffer is not None:
        out.append(("read buffer", len(buffer), 2 * limits.max_frame_size))
    buffered = getattr(connection, "buffered", None)
    if isinstance(buffered, int):
        out.append(("request bytes still arriving", buffered, MAX_CONNECTION_BYTES))
        out.append(("request bytes still arriving (not negative)", -buffered, 0))
    continuation = getattr(connection, "_continuation", None)
    if continuation is not None:
        out.append(("header block in CONTINUATION", len(continuation[2]), limits.max_header_block))
    streams = getattr(connection, "_streams", {})
    out.append(("open streams", len(streams), limits.max_concurrent_streams))
    queued = sum(stream.queued for stream in streams.values())
    most = len(streams) * OUTBOUND_PER_STREAM
    budget = getattr(limits, "max_connection_bytes", None)
    if isinstance(budget, int):  # answers wait within it, but one may always wait
        most = min(most, max(budget, LARGEST_ANSWER))
    out.append(("queued for the peer", queued, most))
    return out


def accounts(connection: Connection, lost: bool) -> list[tuple[str, int, int]]:
    """(name, value, what it must be) of the connection's byte counts that must agree with
    each other, and after the connection was lost (`lost`) be back at zero (as above: the one
    place reading private names)."""
    out = []
    streams = getattr(connection, "_streams", {})
    queued = sum(stream.queued for stream in streams.values())
    sender = getattr(connection, "_sender", None)
    total = getattr(sender, "queued", None)
    if isinstance(total, int):
        out.append(("answer bytes queued, all streams", total, queued))
        answers = getattr(getattr(connection, "_shared", None), "answers", None)
        held = getattr(answers, "held", None)
        if isinstance(held, int):  # the connection's own budget (no server shares it)
            out.append(("answer bytes held in the budget", held, total))
    if lost:
        out.append(("streams open after the connection was lost", len(streams), 0))
        out.append(("answer bytes queued after the connection was lost", queued, 0))
        buffered = getattr(connection, "buffered", 0)
        out.append(("request bytes held after the connection was lost", buffered, 0))
    return out


class Harness:
    """One server Connection, the bytes fed to it, and the checks after every step."""

    def __init__(self, limits: Http2Limits = LIMITS) -> None:
        self.service = FuzzService()
        dispatcher = Dispatcher(self.service.methods(), MAX_MESSAGE, MAX_CONNECTION_BYTES)
        self.connection = Connection(dispatcher, limits)
        self.transport = LosingTransport(self.connection)
        self.connection.connection_made(self.transport)  # type: ignore[arg-type]
        self.client = ClientView(limits.max_frame_size)
        self.wire = WireChecker()
        self.fed_after_close = 0  # chunks that arrived once the transport was closed

    def feed(self, chunk: bytes) -> None:
        if self.transport.closed:
            self.fed_after_close += 1
            if self.transport.lost:
                return  # asyncio delivers nothing after connection_lost
        self.client.feed(chunk)
        self.connection.data_received(chunk)
        self.check()

    async def turn(self, passes: int = 1) -> None:
        for _ in range(passes):
            await asyncio.sleep(0)
            self.check()

    def stop_reading(self) -> None:
        """The client stops reading: the transport's buffer fills and it pauses the protocol."""
        if not self.transport.closed and self.transport.reading_peer:
            self.transport.reading_peer = False
            self.connection.pause_writing()
            self.check()

    def start_reading(self) -> None:
        if not self.transport.closed and not self.transport.reading_peer:
            self.transport.reading_peer = True
            self.connection.resume_writing()
            self.check()

    async def wait(self, seconds: float) -> None:
        """Let `seconds` pass on the loop's clock (VirtualClock), in steps shorter than the
        connection's timer interval, so that its timers fire as they would in real time."""
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClock)
        while seconds > 0:
            step = min(seconds, 2.5)
            loop.offset += step
            seconds -= step
            await self.turn(2)

    def shutdown(self) -> None:
        self.connection.shutdown()
        self.check()

    async def finish(self) -> None:
        """The client goes away (if the server has not closed): then nothing more is written."""
        await self.turn(3)
        ended = self.wire.final_goaway
        self.transport.lose(ConnectionResetError("the client went away"))
        await self.turn(3)
        left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        assert not left, f"tasks still running after the connection was lost: {left}"
        for name, value, expected in accounts(self.connection, lost=True):
            assert value == expected, f"{name}: {value}, not {expected}"
        out = bytes(self.transport.out)
        self.wire.complete(out)
        if currently_in_test_context():
            answered = sum(1 for kind, flags, *_ in self.wire.frames if kind <= 1 and flags & 1)
            reason = "the client"
            if ended is not None:
                debug = [p[8:] for kind, _, _, p in self.wire.frames if kind == f.FrameType.GOAWAY]
                shown = debug[-1].decode(errors="replace").translate(_NO_DIGITS)
                reason = f"{f.ErrorCode(ended).name} ({shown})"
            event(f"ended by {reason}")
            event(f"calls ended by the server: {min(answered, 5)}{'+' if answered >= 5 else ''}")
            event(f"input fed after close: {self.fed_after_close > 0}")

    def check(self) -> None:
        out = bytes(self.transport.out)
        self.wire.check(out, self.client)
        if self.wire.final_goaway is not None:
            assert self.transport.closed, "a GOAWAY with an error, and the transport still open"
        if self.transport.closed:
            return  # windows may have gone out of bounds on the frame that ended it
        for name, value, low, high in observed_windows(self.connection):
            assert low <= value <= high, f"window {name} = {value}, not in {low}..{high}"
        for name, size, most in held_bytes(self.connection):
            assert size <= most, f"{name}: {size} bytes, more than {most}"
        for name, value, expected in accounts(self.connection, lost=False):
            assert value == expected, f"{name}: {value}, not {expected}"


class VirtualClock(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps ahead when told (Harness.wait): timeouts in seconds or
    minutes happen in a test that takes milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset


class _ErrorsLogged(logging.Handler):
    def __init__(self, problems: list[str]) -> None:
        super().__init__(logging.ERROR)
        self._problems = problems

    def emit(self, record: logging.LogRecord) -> None:
        shown = f" ({record.exc_info[1]!r})" if record.exc_info else ""
        self._problems.append(f"logged by {record.name}: {record.getMessage()}{shown}")


def run_example(scenario: Callable[[], Coroutine[Any, Any, None]], passes: int = 5) -> None:
    """Run `scenario` in a fresh event loop, let what it started run `passes` more loop passes,
    then cancel what is left. Fails on any error the loop reports (a callback that raised, a
    task that ended with an exception) and on any error modelport logs (the gRPC layer answers
    an unexpected exception INTERNAL and logs it: none of the test service's methods raises
    one, so each is a bug)."""
    loop = VirtualClock()
    problems: list[str] = []
    logged = _ErrorsLogged(problems)
    logging.getLogger("modelport").addHandler(logged)
    tasks: list[asyncio.Task[Any]] = []

    def task_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        tasks.append(task)
        return task

    def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        problems.append(f"{context.get('message')}: {context.get('exception')!r}")

    loop.set_task_factory(task_factory)
    loop.set_exception_handler(on_error)

    async def settle() -> None:
        for _ in range(passes):
            await asyncio.sleep(0)
        pending = [task for task in tasks if not task.done() and task is not current()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def current() -> asyncio.Task[Any] | None:
        return asyncio.current_task()

    try:
        loop.run_until_complete(scenario())
    finally:  # even when a check failed: no task may outlive its loop
        try:
            loop.run_until_complete(settle())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            logging.getLogger("modelport").removeHandler(logged)
    for task in tasks:
        if not task.done():
            problems.append(f"task {task.get_coro()!r} still pending after being cancelled")
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            problems.append(f"task {task.get_coro()!r} raised {task.exception()!r}")
    assert not problems, "\n".join(problems)
