"""What one HTTP/2 connection allows: windows, sizes, streams, timeouts and work budgets."""

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
    """Seconds from accepting a connection to the client's preface and first SETTINGS (the TLS
    handshake included)."""
    stall_timeout: float = 10.0
    """Seconds a frame may stay half received, or answers wait for a window that never opens."""
    idle_timeout: float = 300.0
    """Seconds a connection may stay open with no call in progress (then GOAWAY); it is closed
    between one and two of these after its last call."""
    frame_units: int = 2_000
    """Frame work a client address may do in a burst: each frame costs a unit, SETTINGS one
    more per setting, header blocks one more per KiB, DATA of 1 KiB or more nothing
    (budgets.FrameWork)."""
    frame_units_per_second: float = 1_000.0
    call_units: float = 8.0
    """Units a completed call gives back (a streamed message delivered gives back one)."""
    resets: int = 200
    """Streams a client address may open and then reset (or have refused) in a burst; more end
    the connection with ENHANCE_YOUR_CALM (rapid reset). Shared by the address's connections."""
    resets_per_second: float = 100.0
    ping_interval: float = 10.0
    """Keepalive PINGs on a connection with no call open may come this often; two that come
    sooner are allowed, the third ends it with ENHANCE_YOUR_CALM and "too_many_pings" as gRPC
    servers do."""
    max_settings: int = 64
    """Settings in one SETTINGS frame (RFC 9113 defines six; clients send a handful)."""
    frames_per_pass: int = 256
    """Frames handled per pass of the event loop; the rest wait for the next pass, so one
    connection's burst cannot hold the loop from the others."""
    max_connection_bytes: int = 64 << 20
    """Per connection: request messages still arriving plus answers waiting for windows."""

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
