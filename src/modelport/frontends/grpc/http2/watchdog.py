"""One timer per connection that closes what stalls: a missing preface, a frame left half sent,
answers waiting for a window that never opens, and connections idle for too long.

The connection only bumps counters in `Progress` as it works (no clock read per frame or call);
every `interval` the watchdog compares them with what it saw last time. Something that has not
moved for a whole timeout is ended, so a stall is caught between one timeout and one timeout plus
an interval after it began.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from modelport.frontends.grpc.http2.limits import Http2Limits


@dataclass(slots=True)
class Progress:
    parsed: int = 0
    """Bytes of complete frames taken from the socket."""
    window: int = 0
    """WINDOW_UPDATE frames and resumed writes: the peer taking our answers."""
    calls: int = 0
    """Calls completed."""


class Watched(Protocol):
    progress: Progress

    @property
    def greeted(self) -> bool:
        """The client's preface and first SETTINGS have arrived."""

    @property
    def frame_pending(self) -> bool:
        """Part of a frame is buffered."""

    @property
    def answers_waiting(self) -> bool:
        """Answers wait for the peer's flow-control window or for it to read the socket."""

    @property
    def open_streams(self) -> int: ...

    def expire(self, reason: str, limit: str) -> None:
        """A stall: end the connection at once (`limit` names the timeout, for metrics)."""

    def retire(self) -> None:
        """Idle for long: GOAWAY, then close."""


class Watchdog:
    __slots__ = (
        "_answers",
        "_connection",
        "_frame",
        "_idle",
        "_limits",
        "_loop",
        "_marks",
        "_opened",
        "_timer",
        "interval",
    )

    def __init__(self, connection: Watched, limits: Http2Limits) -> None:
        self._connection = connection
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._opened = self._loop.time()
        self.interval = max(
            0.05, min(limits.preface_timeout, limits.stall_timeout, limits.idle_timeout) / 2
        )
        self._marks = Progress(-1, -1, -1)
        self._frame: float | None = None  # since when each thing has not moved
        self._answers: float | None = None
        self._idle: float | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        connection, limits, now = self._connection, self._limits, self._loop.time()
        stalled = self._stalled(now)
        if stalled is not None:
            connection.expire(*stalled)
            return
        if self._idle_for(now) >= limits.idle_timeout:
            connection.retire()
        self._timer = self._loop.call_later(self.interval, self._tick)

    def _stalled(self, now: float) -> tuple[str, str] | None:
        """Why and by which limit the connection must end now, if it must."""
        connection, limits = self._connection, self._limits
        if not connection.greeted:
            if now - self._opened >= limits.preface_timeout:
                return "no preface and SETTINGS in time", "header_timeout"
            return None
        progress, marks = connection.progress, self._marks
        if connection.frame_pending and progress.parsed == marks.parsed:
            self._frame = now if self._frame is None else self._frame
            if now - self._frame >= limits.stall_timeout:
                return "a frame stalled half received", "frame_stall"
        else:
            self._frame = None
        if connection.answers_waiting and progress.window == marks.window:
            self._answers = now if self._answers is None else self._answers
            if now - self._answers >= limits.stall_timeout:
                return "the client takes none of its answers", "answer_stall"
        else:
            self._answers = None
        marks.parsed, marks.window = progress.parsed, progress.window
        return None

    def _idle_for(self, now: float) -> float:
        connection, marks = self._connection, self._marks
        calls = connection.progress.calls
        if connection.open_streams or calls != marks.calls:
            marks.calls = calls
            self._idle = None
            return 0.0
        self._idle = now if self._idle is None else self._idle
        return now - self._idle
