"""HTTP/2 wire constants and the few frames and header blocks this server writes (RFC 9113, 7541).

Header blocks we send never touch the HPACK dynamic table (static-table references and literals
without indexing), so they can be built once and reused on every connection.
"""

from __future__ import annotations

import struct
from enum import IntEnum

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADER = struct.Struct(">BHBBI")
"""The 9-byte frame header: 24-bit length (as a byte and a short), type, flags, stream id."""
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
DEFAULT_FRAME_SIZE = 16_384
MAX_FRAME_SIZE_LIMIT = 2**24 - 1


class FrameType(IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


class Flag:
    END_STREAM = 0x1
    ACK = 0x1
    END_HEADERS = 0x4
    PADDED = 0x8
    PRIORITY = 0x20


class Setting(IntEnum):
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


class ErrorCode(IntEnum):
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB


class ConnectionFailure(Exception):
    """A violation that ends the connection with GOAWAY; `limit` names the defence that ended
    it, for the refusal metrics (empty for protocol errors)."""

    def __init__(self, code: ErrorCode, message: str, limit: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.limit = limit


class StreamFailure(Exception):
    """A violation that ends one stream with RST_STREAM."""

    def __init__(self, stream_id: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes | memoryview = b"") -> bytes:
    return frame_header(kind, flags, stream_id, len(payload)) + payload


def frame_header(kind: int, flags: int, stream_id: int, length: int) -> bytes:
    return HEADER.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)


def settings(values: dict[Setting, int]) -> bytes:
    payload = b"".join(struct.pack(">HI", key, value) for key, value in values.items())
    return frame(FrameType.SETTINGS, 0, 0, payload)


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    if len(payload) % 6:
        raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS size not a multiple of 6")
    return [struct.unpack_from(">HI", payload, offset) for offset in range(0, len(payload), 6)]


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(FrameType.WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def rst_stream(stream_id: int, code: ErrorCode) -> bytes:
    return frame(FrameType.RST_STREAM, 0, stream_id, struct.pack(">I", code))


def goaway(last_stream_id: int, code: ErrorCode, debug: bytes = b"") -> bytes:
    return frame(FrameType.GOAWAY, 0, 0, struct.pack(">II", last_stream_id, code) + debug)


def hpack_integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 5.1: `value` with an N-bit prefix; `first` holds the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, with a literal name (RFC 7541 6.2.2)."""
    return b"\x00" + hpack_integer(len(name), 7) + name + hpack_integer(len(value), 7) + value


STATUS_200 = b"\x88"  # static table entry 8, ':status: 200'


def hpack_status(code: int) -> bytes:
    """':status' by its static-table name (index 8) with a literal value, without indexing."""
    value = str(code).encode()
    return hpack_integer(8, 4) + hpack_integer(len(value), 7) + value


def unpad(payload: memoryview) -> memoryview:
    """The payload of a PADDED frame without its pad length byte and padding."""
    if not payload:
        raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "padded frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]


_HTTP1_BODY = b"This port serves gRPC: HTTP/2 with prior knowledge, not HTTP/1.1.\n"
HTTP1_REFUSAL = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_HTTP1_BODY), _HTTP1_BODY)
)
"""What a client speaking HTTP/1.1 to the gRPC port gets back, before the connection closes."""
