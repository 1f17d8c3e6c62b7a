"""The client's stream ids on one connection: used, opened, and lately reset (RFC 9113 5.1.1)."""

from __future__ import annotations

from modelport.frontends.grpc.http2.frames import ConnectionFailure, ErrorCode

RECENT_RESETS = 256  # stream ids we reset that may still see the peer's in-flight frames


class StreamIds:
    def __init__(self) -> None:
        self.last_opened = 0  # the highest stream we opened: what GOAWAY reports
        self._highest = 0  # the highest the client used: above it, streams are idle
        self._reset: dict[int, None] = {}  # an ordered set, oldest first

    def idle(self, stream_id: int) -> bool:
        return stream_id > self._highest

    def open(self, stream_id: int, accepting: bool) -> bool:
        """HEADERS for a stream we do not have: whether to open it. A new id must be above
        every earlier one, unless it belongs to a stream we reset lately (its trailers may
        still come) or we are no longer accepting streams."""
        if stream_id <= self._highest:
            if stream_id in self._reset or not accepting:
                return False
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "stream id not above the last one")
        self._highest = stream_id
        if accepting:
            self.last_opened = stream_id  # frozen once we sent GOAWAY (RFC 9113 6.8)
        return accepting

    def reset(self, stream_id: int) -> None:
        self._reset[stream_id] = None
        if len(self._reset) > RECENT_RESETS:
            del self._reset[next(iter(self._reset))]
