"""What one HTTP/2 connection allows: windows, frame and header sizes, streams, idle frames."""

from __future__ import annotations

from dataclasses import dataclass

from modelport.frontends.grpc.http2 import frames as f


@dataclass(frozen=True, slots=True)
class Http2Limits:
    max_concurrent_streams: int = 1024
    stream_window: int = 1 << 20
    connection_window: int = 16 << 20
    max_frame_size: int = 1 << 20
    max_header_list_size: int = 16 << 10
    max_header_block: int = 64 << 10
    preface_timeout: float = 10.0
    max_idle_frames: int = 10_000
    """Frames that do no work (PING, SETTINGS, RST_STREAM, PRIORITY, empty DATA/CONTINUATION)
    allowed since the last call that completed or the last DATA with payload; more end the
    connection with ENHANCE_YOUR_CALM (ping floods, rapid reset)."""

    def __post_init__(self) -> None:
        if not f.DEFAULT_WINDOW <= self.connection_window <= f.MAX_WINDOW:
            raise ValueError("connection_window must be within 65535 .. 2^31-1")
        if not 0 <= self.stream_window <= f.MAX_WINDOW:
            raise ValueError("stream_window must be within 0 .. 2^31-1")
        if not f.DEFAULT_FRAME_SIZE <= self.max_frame_size <= f.MAX_FRAME_SIZE_LIMIT:
            raise ValueError("max_frame_size must be within 16384 .. 2^24-1")

    def announcement(self) -> bytes:
        """Our SETTINGS and the connection window, sent once the client's preface has been seen
        (so a client that is not speaking HTTP/2 gets a plain answer and no binary frames)."""
        settings = f.settings(
            {
                f.Setting.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams,
                f.Setting.INITIAL_WINDOW_SIZE: self.stream_window,
                f.Setting.MAX_FRAME_SIZE: self.max_frame_size,
                f.Setting.MAX_HEADER_LIST_SIZE: self.max_header_list_size,
            }
        )
        extra = self.connection_window - f.DEFAULT_WINDOW
        return settings + (f.window_update(0, extra) if extra > 0 else b"")
