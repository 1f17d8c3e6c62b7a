"""Frame descriptions the property tests draw (tests/unit/test_http2_fuzz.py) and the hypothesis
strategies that draw them: requests with HPACK blocks from hpack.Encoder for the test service's
paths, DATA with and without padding, every other frame type well formed or not, and actions
between them (loop passes, time passing, a client that stops reading, a graceful shutdown).
`Render` turns them into bytes in order, with one HPACK encoder and the stream ids used so far."""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from typing import Any

import hpack
from hypothesis import strategies as st

from modelport.frontends.grpc.http2 import frames as f
from modelport.frontends.grpc.rpc import frame_message
from tests.h2fuzz import BIG
from tests.h2peer import CHAT, ECHO, FAIL, TICK, WAIT, request

PATHS = (ECHO, ECHO, WAIT, FAIL, CHAT, TICK, BIG, b"/t.S/Missing")
Ref = str | int
"""A stream: 'new' (the next unused id), 'last' or 'first' (ones opened before), or an id."""


class Render:
    """Turns frame descriptions into bytes in order: one HPACK encoder, the ids used so far."""

    def __init__(self) -> None:
        self.encoder = hpack.Encoder()
        self.next_id = 1
        self.opened: list[int] = []

    def stream(self, ref: Ref, opening: bool = False) -> int:
        if ref == "new":
            stream_id = self.next_id
            if opening:
                self.next_id += 2
                self.opened.append(stream_id)
            return stream_id
        if ref in ("last", "first"):
            return (self.opened[-1] if ref == "last" else self.opened[0]) if self.opened else 1
        assert isinstance(ref, int)
        if opening and ref % 2 and ref >= self.next_id:
            self.next_id = ref + 2
            self.opened.append(ref)
        return ref


def padded(payload: bytes, pad: int | None, priority: bytes = b"") -> tuple[int, bytes]:
    if pad is None:
        return 0, priority + payload
    return f.Flag.PADDED, bytes([pad]) + priority + payload + bytes(pad)


@dataclass(frozen=True)
class Headers:
    stream: Ref
    path: bytes
    method: bytes
    content_type: bytes
    extra: tuple[tuple[bytes, bytes], ...]
    end_stream: bool
    pieces: int  # the block split into HEADERS and pieces - 1 CONTINUATIONs
    pad: int | None
    priority: bool
    huffman: bool
    never_index: bool
    table_size: int | None

    def render(self, out: Render) -> bytes:
        stream_id = out.stream(self.stream, opening=True)
        if self.table_size is not None:
            out.encoder.header_table_size = self.table_size
        fields = [
            (b":method", self.method),
            (b":scheme", b"http"),
            (b":path", self.path),
            (b":authority", b"fuzz"),
            (b"content-type", self.content_type),
            *self.extra,
        ]
        block = out.encoder.encode(
            [(name, value, self.never_index) for name, value in fields], huffman=self.huffman
        )
        size = -(-len(block) // self.pieces)
        parts = [block[i : i + size] for i in range(0, len(block), size)] or [b""]
        flags = f.Flag.END_STREAM if self.end_stream else 0
        flags |= f.Flag.END_HEADERS if len(parts) == 1 else 0
        flags |= f.Flag.PRIORITY if self.priority else 0
        pad_flag, first = padded(parts[0], self.pad, b"\0\0\0\0\x10" if self.priority else b"")
        frames = [f.frame(f.FrameType.HEADERS, flags | pad_flag, stream_id, first)]
        for index, part in enumerate(parts[1:], start=2):
            last = f.Flag.END_HEADERS if index == len(parts) else 0
            frames.append(f.frame(f.FrameType.CONTINUATION, last, stream_id, part))
        return b"".join(frames)


@dataclass(frozen=True)
class Data:
    stream: Ref
    body: bytes  # split into frames of at most 16 KiB, END_STREAM (if asked) on the last
    end_stream: bool
    pad: int | None
    lying_pad: bool  # a pad length longer than the frame

    def render(self, out: Render) -> bytes:
        stream_id = out.stream(self.stream)
        room = f.DEFAULT_FRAME_SIZE - 256
        pieces = [self.body[i : i + room] for i in range(0, len(self.body), room)] or [b""]
        frames = []
        for index, piece in enumerate(pieces):
            flags = f.Flag.END_STREAM if self.end_stream and index == len(pieces) - 1 else 0
            pad_flag, payload = padded(piece, self.pad)
            if self.lying_pad:
                pad_flag, payload = f.Flag.PADDED, bytes([len(piece) + 1]) + piece
            frames.append(f.frame(f.FrameType.DATA, flags | pad_flag, stream_id, payload))
        return b"".join(frames)


@dataclass(frozen=True)
class Call:
    """A whole request: HEADERS on a new stream, then its message and END_STREAM."""

    headers: Headers
    body: Data

    def render(self, out: Render) -> bytes:
        return self.headers.render(out) + self.body.render(out)


@dataclass(frozen=True)
class Trailers:
    """HEADERS on a stream already open: the request's trailers."""

    stream: Ref
    field: tuple[bytes, bytes]
    end_stream: bool

    def render(self, out: Render) -> bytes:
        block = out.encoder.encode([self.field])
        flags = f.Flag.END_HEADERS | (f.Flag.END_STREAM if self.end_stream else 0)
        return f.frame(f.FrameType.HEADERS, flags, out.stream(self.stream), block)


@dataclass(frozen=True)
class Frame:
    """Any other frame: its type, flags, stream and payload as drawn."""

    kind: int
    flags: int
    stream: Ref
    payload: bytes

    def render(self, out: Render) -> bytes:
        return f.frame(self.kind, self.flags, out.stream(self.stream), self.payload)


@dataclass(frozen=True)
class Action:
    """Not a frame: 'turn' (`passes` loop passes), 'wait' (`passes` seconds on the loop's clock),
    'release' (the waiting handlers go on), 'shutdown', 'stop reading' and 'start reading' (the
    client's socket: pause_writing, resume_writing)."""

    name: str
    passes: int = 1


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, drawn `weight` times as often as a strategy of weight 1."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(
        lambda chosen: chosen
    )


odd_ids = st.sampled_from([0, 1, 2, 3, 9, 2**31 - 1])
refs = weighted((1, st.just("new")), (10, st.just("last")), (3, st.just("first")), (1, odd_ids))
opening_refs = weighted((12, st.just("new")), (1, st.just("last")), (1, odd_ids))
sizes = st.one_of(st.integers(0, 40), st.sampled_from([1000, 5000, 8187, 8192, 9000, 20_000]))
messages = weighted(
    (8, sizes.map(lambda n: request("m", b"p" * n))),
    (1, st.binary(max_size=24)),
    (1, st.just(b"\0\xff\xff\xff\xff")),  # a message larger than any limit
    (1, st.just(b"\x01\0\0\0\x03abc")),  # compressed, but not gzip
    (1, st.just(b"\x07\0\0\0\0")),  # an invalid compressed flag
    (1, sizes.map(lambda n: request("m", b"q" * n) * 2)),  # one too many for a unary call
)
extras = st.lists(
    st.sampled_from(
        [
            (b"te", b"trailers"),
            (b"grpc-timeout", b"1n"),
            (b"grpc-timeout", b"10S"),
            (b"grpc-timeout", b"soon"),
            (b"grpc-encoding", b"gzip"),
            (b"grpc-encoding", b"br"),
            (b"x-request-id", b"fuzz-1"),
            (b"user-agent", b"fuzz/1"),
            (b"Upper-Case", b"x"),
            (b":path", b"/again"),
            (b"connection", b"keep-alive"),
        ]
    ),
    max_size=3,
).map(tuple)
headers = st.builds(
    Headers,
    stream=opening_refs,
    path=st.sampled_from(PATHS),
    method=st.sampled_from([b"POST", b"POST", b"POST", b"GET"]),
    content_type=st.sampled_from([b"application/grpc", b"application/grpc", b"text/x"]),
    extra=extras,
    end_stream=st.booleans(),
    pieces=st.sampled_from([1, 1, 1, 2, 3]),
    pad=st.one_of(st.none(), st.none(), st.integers(0, 40)),
    priority=st.booleans(),
    huffman=st.booleans(),
    never_index=st.booleans(),
    table_size=st.sampled_from([None] * 20 + [0, 256, 8192]),
)
data_frames = weighted(
    (6, st.builds(Data, refs, messages, st.booleans(), st.none(), st.just(False))),
    (2, st.builds(Data, refs, messages, st.booleans(), st.integers(0, 255), st.just(False))),
    (1, st.builds(Data, refs, st.binary(max_size=8), st.booleans(), st.none(), st.just(True))),
)
u32 = weighted(
    (3, st.sampled_from([0, 1, 100, 16_383, 16_384, 65_535, 1 << 20, 2**24 - 1, 2**24])),
    (2, st.sampled_from([2**31 - 1, 2**31, 2**32 - 1, 2**31 - 1 - 65_535, 2**30])),
    (1, st.integers(0, 2**32 - 1)),
)
valid_settings = st.one_of(
    st.tuples(st.sampled_from([1, 3, 6]), st.integers(0, 2**32 - 1)),
    st.tuples(st.just(2), st.integers(0, 1)),
    st.tuples(st.just(4), st.sampled_from([0, 1, 1000, 65_535, 70_000, 2**31 - 1])),
    st.tuples(st.just(5), st.sampled_from([16_384, 16_385, 40_000, 2**24 - 1])),
    st.tuples(st.integers(7, 0xFFFF), st.integers(0, 2**32 - 1)),  # unknown: ignored
)
any_setting = st.tuples(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 0xFFFF]), u32)
setting_entries = st.lists(weighted((8, valid_settings), (1, any_setting)), max_size=5).map(
    lambda entries: b"".join(struct.pack(">HI", key, value) for key, value in entries)
)
T = f.FrameType
some_flags = st.sampled_from([0, 0, 0, 1, 4, 8, 0x20, 0xFF])
eight_bytes = st.binary(min_size=8, max_size=8)
increments = weighted((4, st.integers(1, 70_000)), (1, u32)).map(struct.Struct(">I").pack)
error_codes = st.integers(0, 14).map(struct.Struct(">I").pack)
goaway_payloads = st.tuples(st.integers(0, 9), st.integers(0, 14), st.binary(max_size=8)).map(
    lambda t: struct.pack(">II", t[0], t[1]) + t[2]
)
well_formed = st.one_of(
    st.builds(Frame, st.just(T.SETTINGS), st.just(0), st.just(0), setting_entries),
    st.builds(Frame, st.just(T.SETTINGS), st.just(1), st.just(0), st.just(b"")),
    st.builds(Frame, st.just(T.PING), st.sampled_from([0, 1]), st.just(0), eight_bytes),
    st.builds(Frame, st.just(T.WINDOW_UPDATE), st.just(0), refs, increments),
    st.builds(Frame, st.just(T.WINDOW_UPDATE), st.just(0), st.just(0), increments),
    st.builds(Frame, st.just(T.RST_STREAM), st.just(0), refs, error_codes),
    st.builds(Frame, st.just(T.PRIORITY), st.just(0), refs, st.binary(min_size=5, max_size=5)),
    st.builds(Frame, st.just(T.GOAWAY), st.just(0), st.just(0), goaway_payloads),
    st.builds(Frame, st.integers(10, 255), some_flags, refs, st.binary(max_size=16)),
)  # fmt: skip
bad_refs = st.sampled_from(["last", "last", 0, 0, 1, 2, "new"])
malformed = st.one_of(
    st.builds(Frame, st.just(T.SETTINGS), some_flags, bad_refs, st.binary(max_size=13)),
    st.builds(Frame, st.just(T.PING), some_flags, bad_refs, st.binary(max_size=12)),
    st.builds(Frame, st.just(T.WINDOW_UPDATE), some_flags, bad_refs, st.binary(max_size=6)),
    st.builds(Frame, st.just(T.RST_STREAM), some_flags, bad_refs, st.binary(max_size=6)),
    st.builds(Frame, st.just(T.PRIORITY), some_flags, bad_refs, st.binary(min_size=4, max_size=6)),
    st.builds(Frame, st.just(T.GOAWAY), some_flags, bad_refs, st.binary(max_size=12)),
    st.builds(Frame, st.just(T.CONTINUATION), some_flags, bad_refs, st.binary(max_size=8)),
    st.builds(Frame, st.just(T.PUSH_PROMISE), some_flags, bad_refs, st.binary(max_size=8)),
    st.builds(Frame, st.sampled_from(list(T)), some_flags, bad_refs, st.binary(max_size=16)),
)
actions = st.one_of(
    st.builds(Action, st.just("turn"), st.integers(1, 3)),
    st.builds(Action, st.just("wait"), st.sampled_from([1, 6, 12, 25, 320])),
    st.just(Action("release")),
    st.just(Action("shutdown")),
    st.just(Action("stop reading")),
    st.just(Action("start reading")),
)
call_paths = st.sampled_from([ECHO, ECHO, ECHO, BIG, BIG, WAIT, WAIT, FAIL, CHAT, CHAT, TICK])
call_extras = st.lists(
    st.sampled_from(
        [
            (b"te", b"trailers"),
            (b"grpc-timeout", b"1n"),
            (b"grpc-timeout", b"10S"),
            (b"grpc-encoding", b"gzip"),
            (b"x-request-id", b"fuzz-2"),
        ]
    ),
    max_size=2,
).map(tuple)
call_bodies = weighted(
    (8, sizes.map(lambda n: request("c", b"c" * n))),
    (2, st.integers(2, 5).map(lambda k: request("s") * k)),  # a stream's messages
    (1, st.binary(min_size=1, max_size=12).map(frame_message)),  # not a BytesValue
    (1, st.just(b"\x01" + frame_message(gzip.compress(request("z", b"z" * 100)[5:]))[1:])),
)
calls = st.builds(
    Call,
    st.builds(
        Headers, st.just("new"), call_paths, st.just(b"POST"), st.just(b"application/grpc"),
        call_extras, st.just(False), st.sampled_from([1, 1, 2]), st.none(), st.booleans(),
        st.booleans(), st.booleans(), st.none(),
    ),
    st.builds(
        Data, st.just("last"), call_bodies, weighted((6, st.just(True)), (1, st.just(False))),
        st.one_of(st.none(), st.integers(0, 30)), st.just(False),
    ),
)  # fmt: skip
trailers = st.builds(
    Trailers,
    st.sampled_from(["last", "last", "first"]),
    st.sampled_from([(b"x-trailer", b"1"), (b":status", b"200"), (b"Bad", b"x")]),
    weighted((4, st.just(True)), (1, st.just(False))),
)
items = weighted(
    (8, calls),
    (3, headers),
    (1, trailers),
    (5, data_frames),
    (6, well_formed),
    (1, malformed),
    (4, actions),
)
first_settings = st.builds(Frame, st.just(T.SETTINGS), st.just(0), st.just(0), setting_entries)
stingy_settings = st.sampled_from([0, 1, 100, 5000]).map(
    lambda window: Frame(T.SETTINGS, 0, 0, struct.pack(">HI", 4, window))
)  # a client that keeps its windows (nearly) closed: answers must wait
