"""One HTTP/2 stream's state, and what the layer above hears about it."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol


class StreamEvents(Protocol):
    """What happens to a stream after its request headers; the gRPC layer implements it."""

    def data(self, chunk: memoryview) -> None:
        """Body bytes (padding removed). `chunk` is only valid during the call: copy it."""

    def end(self) -> None:
        """The peer finished sending (END_STREAM)."""

    def reset(self) -> None:
        """The stream was reset by the peer, by a protocol error, or by the connection closing."""


class Stream:
    __slots__ = (
        "drained",
        "events",
        "outbound",
        "queued",
        "recv_unacked",
        "recv_window",
        "remote_closed",
        "send_window",
        "stream_id",
        "trailers",
    )

    def __init__(self, stream_id: int, recv_window: int, send_window: int) -> None:
        self.stream_id = stream_id
        self.events: StreamEvents | None = None
        self.recv_window = recv_window
        self.recv_unacked = 0  # bytes the application took that the peer was not given back
        self.send_window = send_window
        self.remote_closed = False
        self.outbound: deque[memoryview] = deque()  # body bytes the windows have not let out
        self.queued = 0  # bytes in `outbound`
        self.drained: asyncio.Future[None] | None = None  # a sender waiting for `queued` to fall
        self.trailers: bytes | None = None  # sent once `outbound` is empty

    def wake(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
