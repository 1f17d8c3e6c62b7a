"""What a server may write on an HTTP/2 connection, checked frame by frame as its output grows
(`WireChecker`), against what the client's bytes allowed it (`ClientView`): for the property
tests (tests/unit/test_http2_fuzz.py through tests/h2fuzz.py)."""

from __future__ import annotations

import struct

import hpack

from modelport.frontends.grpc.http2 import frames as f

_SERVER_TYPES = {0, 1, 3, 4, 6, 7, 8, 9}  # no PRIORITY, PUSH_PROMISE or unknown types


class ClientView:
    """What the client's bytes fed so far allow the server (its frames parsed as the server
    would): the largest frame it accepts, flow-control credit, the streams it opened."""

    def __init__(self, max_frame_size: int) -> None:
        self._max_frame_size = max_frame_size  # the server's: it reads nothing past a larger one
        self.fed = bytearray()
        self._pos = 0
        self.http2: bool | None = None  # whether the bytes began with the preface
        self.frame_size = f.DEFAULT_FRAME_SIZE
        self.initial_window = f.DEFAULT_WINDOW  # the largest INITIAL_WINDOW_SIZE announced
        self.connection_credit = f.DEFAULT_WINDOW
        self.stream_credit: dict[int, int] = {}
        self.opened: set[int] = set()  # streams the client sent HEADERS on

    def feed(self, chunk: bytes) -> None:
        self.fed += chunk
        data = self.fed
        if self.http2 is None:
            if len(data) < len(f.PREFACE) and f.PREFACE.startswith(bytes(data)):
                return
            self.http2 = data.startswith(f.PREFACE)
            self._pos = len(f.PREFACE)
        if not self.http2:
            return
        while len(data) - self._pos >= 9:
            high, low, kind, flags, stream_id = f.HEADER.unpack_from(data, self._pos)
            length = (high << 16) | low
            if length > self._max_frame_size:
                self._pos = len(data) + (1 << 30)  # the server stops reading here
                return
            if len(data) - self._pos - 9 < length:
                return
            payload = bytes(data[self._pos + 9 : self._pos + 9 + length])
            self._pos += 9 + length
            self._frame(kind, flags, stream_id & 0x7FFFFFFF, payload)

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == f.FrameType.HEADERS:
            self.opened.add(stream_id)
        elif kind == f.FrameType.SETTINGS and not flags & f.Flag.ACK and len(payload) % 6 == 0:
            for offset in range(0, len(payload), 6):
                key, value = struct.unpack_from(">HI", payload, offset)
                if key == f.Setting.MAX_FRAME_SIZE and value <= f.MAX_FRAME_SIZE_LIMIT:
                    self.frame_size = max(self.frame_size, value)
                elif key == f.Setting.INITIAL_WINDOW_SIZE and value <= f.MAX_WINDOW:
                    self.initial_window = max(self.initial_window, value)
        elif kind == f.FrameType.WINDOW_UPDATE and len(payload) == 4:
            increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
            if stream_id == 0:
                self.connection_credit += increment
            else:
                self.stream_credit[stream_id] = self.stream_credit.get(stream_id, 0) + increment


class WireChecker:
    """Parses the server's output as it grows and fails on the first frame a server must not
    send there (AssertionError naming the frame)."""

    def __init__(self) -> None:
        self._pos = 0
        self.frames: list[tuple[int, int, int, bytes]] = []
        self.final_goaway: int | None = None  # the error code of a GOAWAY that ended it all
        self.goaway_last: int | None = None  # the last stream id of the latest GOAWAY
        self._block: tuple[int, bytearray] | None = None  # a header block still arriving
        self._answered: set[int] = set()  # streams whose response headers went out
        self._ended: set[int] = set()  # streams the server ended or reset
        self._sent = 0
        self._sent_on: dict[int, int] = {}

    def check(self, out: bytes, client: ClientView) -> None:
        if client.http2 is False:
            assert out in (b"", f.HTTP1_REFUSAL), f"answer to a non-HTTP/2 client: {out[:80]!r}"
            return
        while len(out) - self._pos >= 9:
            high, low, kind, flags, stream_id = f.HEADER.unpack_from(out, self._pos)
            length = (high << 16) | low
            assert length <= client.frame_size, f"a {length}-byte frame (type {kind})"
            if len(out) - self._pos - 9 < length:
                break
            payload = out[self._pos + 9 : self._pos + 9 + length]
            self._pos += 9 + length
            where = f"frame {len(self.frames)} (type {kind}, flags {flags:#x}, stream {stream_id})"
            assert self.final_goaway is None, f"{where} after a GOAWAY with an error"
            self._frame(kind, flags, stream_id, payload, client, where)
            self.frames.append((kind, flags, stream_id, payload))
        assert self._sent <= client.connection_credit, (
            f"{self._sent} bytes of DATA, {client.connection_credit} of connection window"
        )
        for stream_id, sent in self._sent_on.items():
            credit = client.initial_window + client.stream_credit.get(stream_id, 0)
            assert sent <= credit, f"{sent} bytes of DATA on {stream_id}, {credit} of window"

    def complete(self, out: bytes) -> None:
        """At the end: the output holds whole frames only (unless it is the HTTP/1.1 answer)."""
        if out != f.HTTP1_REFUSAL:
            assert self._pos == len(out), f"{len(out) - self._pos} bytes of a partial frame"

    def _frame(
        self,
        kind: int,
        flags: int,
        stream_id: int,
        payload: bytes,
        client: ClientView,
        where: str,
    ) -> None:
        assert not stream_id & 0x80000000, f"{where}: reserved bit set"
        assert kind in _SERVER_TYPES, f"{where}: a server never sends this type"
        if not self.frames:
            assert kind == f.FrameType.SETTINGS and not flags, f"{where}: SETTINGS must be first"
        if self._block is not None:
            assert kind == f.FrameType.CONTINUATION, f"{where}: inside a header block"
            assert stream_id == self._block[0], f"{where}: CONTINUATION of another stream"
        if kind in (f.FrameType.DATA, f.FrameType.HEADERS):
            assert stream_id in client.opened, f"{where}: a stream the client did not open"
            assert stream_id not in self._ended, f"{where}: after the stream ended"
            last = self.goaway_last
            assert last is None or stream_id <= last, f"{where}: above GOAWAY's last stream"
        if kind == f.FrameType.DATA:
            assert not flags & ~f.Flag.END_STREAM, f"{where}: unexpected flags"
            assert stream_id in self._answered, f"{where}: DATA before response headers"
            self._sent += len(payload)
            self._sent_on[stream_id] = self._sent_on.get(stream_id, 0) + len(payload)
            if flags & f.Flag.END_STREAM:
                self._ended.add(stream_id)
        elif kind == f.FrameType.HEADERS:
            assert not flags & ~(f.Flag.END_STREAM | f.Flag.END_HEADERS), f"{where}: flags"
            if flags & f.Flag.END_STREAM:
                self._ended.add(stream_id)
            self._block = (stream_id, bytearray(payload))
            if flags & f.Flag.END_HEADERS:
                self._header_block(where)
        elif kind == f.FrameType.CONTINUATION:
            assert self._block is not None, f"{where}: CONTINUATION without HEADERS"
            assert not flags & ~f.Flag.END_HEADERS, f"{where}: unexpected flags"
            self._block[1].extend(payload)
            if flags & f.Flag.END_HEADERS:
                self._header_block(where)
        elif kind == f.FrameType.RST_STREAM:
            assert stream_id and len(payload) == 4, f"{where}: malformed"
            assert stream_id <= max(client.opened, default=0), f"{where}: an idle stream"
            assert int.from_bytes(payload, "big") in set(f.ErrorCode), f"{where}: error code"
            self._ended.add(stream_id)
        elif kind == f.FrameType.SETTINGS:
            assert stream_id == 0, f"{where}: on a stream"
            if flags & f.Flag.ACK:
                assert not payload, f"{where}: ACK with a payload"
            else:
                assert not flags and len(payload) % 6 == 0, f"{where}: malformed"
        elif kind == f.FrameType.PING:
            assert stream_id == 0 and len(payload) == 8, f"{where}: malformed"
            assert not flags & ~f.Flag.ACK, f"{where}: unexpected flags"
        elif kind == f.FrameType.GOAWAY:
            assert stream_id == 0 and len(payload) >= 8, f"{where}: malformed"
            last, code = struct.unpack_from(">II", payload)
            assert last <= max(client.opened, default=0), f"{where}: last stream {last}"
            assert code in set(f.ErrorCode), f"{where}: error code {code}"
            before = self.goaway_last
            assert before is None or last <= before, f"{where}: last stream {before} -> {last}"
            self.goaway_last = last
            if code != f.ErrorCode.NO_ERROR:
                self.final_goaway = code
        elif kind == f.FrameType.WINDOW_UPDATE:
            assert len(payload) == 4, f"{where}: malformed"
            increment = int.from_bytes(payload, "big")
            assert 0 < increment <= f.MAX_WINDOW, f"{where}: increment {increment}"
            assert stream_id <= max(client.opened, default=0), f"{where}: an idle stream"

    def _header_block(self, where: str) -> None:
        assert self._block is not None
        stream_id, block = self._block
        self._block = None
        try:  # our blocks never use the dynamic table: a fresh decoder reads each one
            headers = hpack.Decoder().decode(bytes(block), raw=True)
        except hpack.HPACKError as exc:
            raise AssertionError(f"{where}: header block does not decode: {exc}") from None
        names = [name for name, _ in headers]
        if stream_id not in self._answered:
            assert names[:1] == [b":status"], f"{where}: response headers without :status"
            self._answered.add(stream_id)
        else:
            assert b":status" not in names, f"{where}: trailers with :status"
