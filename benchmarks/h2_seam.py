"""An HTTP/2 connection built on the h2 library, behind the seam our own Connection offers.

`H2Seam` is an asyncio Protocol that implements what modelport's gRPC layer
(`modelport.frontends.grpc.rpc.Dispatcher` and its calls) uses of a connection: `send_headers`,
`send_data`, `send_trailers`, `respond`, `consumed`, `writable`, `peer`, `buffered`,
`active_streams`, `refused`, `delivered`, `shutdown`, `abort`. It calls the same Dispatcher
with (connection, stream_id, headers) for each new stream, so in benchmarks/transport_floor.py
only the HTTP/2 layer differs between our server and this one.

The gRPC layer hands us header blocks already HPACK-encoded (static-table references and
literals without indexing, see frames.py); h2 wants header lists, so they are decoded here
(`header_list`, with the hpack package for any form our blocks do not use). Like our Connection,
writes made in one pass of the event loop go out in one transport write, and answers wait for
the peer's flow-control windows per stream. Announced settings match Http2Limits' defaults.
It is a benchmark's yardstick, not a hardened server: none of our connection's defences.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack

STREAM_SEND_BUFFER = 256 << 10  # as sender.STREAM_SEND_BUFFER: streaming handlers wait past it
_STATIC = {8: b":status"}  # the only static-table names our blocks reference
_CONNECTION_WINDOW = 16 << 20
_SETTINGS = {
    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1024,
    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
    h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20,
    h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16 << 10,
}


def _integer(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """RFC 7541 5.1: the integer at `pos` with an N-bit prefix, and the position after it."""
    limit = (1 << prefix_bits) - 1
    value = block[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def header_list(block: bytes) -> list[tuple[bytes, bytes]]:
    """Our encoded header block as (name, value) pairs: `\\x88` (:status 200), ':status' by
    index with a literal value, and literals with literal names, all without indexing and
    without Huffman coding. Any other form goes to a fresh hpack.Decoder (our blocks never touch
    the dynamic table, so a fresh one reads them)."""
    out = []
    pos, end = 0, len(block)
    while pos < end:
        first = block[pos]
        if first == 0x88:
            out.append((b":status", b"200"))
            pos += 1
            continue
        if first & 0xF0 or (first == 0x00 and pos + 1 < end and block[pos + 1] & 0x80):
            return _decoded(block)  # indexing, dynamic table, or Huffman-coded name
        index, pos = _integer(block, pos, 4)
        if index:
            name = _STATIC.get(index)
            if name is None:
                return _decoded(block)
        else:
            size, pos = _integer(block, pos, 7)
            name, pos = block[pos : pos + size], pos + size
        if block[pos] & 0x80:
            return _decoded(block)  # a Huffman-coded value
        size, pos = _integer(block, pos, 7)
        out.append((name, block[pos : pos + size]))
        pos += size
    return out


def _decoded(block: bytes) -> list[tuple[bytes, bytes]]:
    return cast(list[tuple[bytes, bytes]], hpack.Decoder().decode(block, raw=True))


class _Stream:
    __slots__ = ("drained", "events", "outbound", "queued", "trailers")

    def __init__(self, events: Any) -> None:
        self.events = events
        self.outbound: deque[memoryview] = deque()
        self.queued = 0
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.drained: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)


class H2Seam(asyncio.Protocol):
    def __init__(self, opener: Any) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self._h2 = h2.connection.H2Connection(config)
        self._opener = opener
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        self._flush_scheduled = False
        self._receiving = False
        self._draining = False
        self._peer: str | None = None
        self.buffered = 0
        """Bytes of request messages still arriving (kept by the gRPC layer, as on ours)."""

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._h2.initiate_connection()
        self._h2.update_settings(_SETTINGS)
        self._h2.increment_flow_control_window(_CONNECTION_WINDOW - 65_535)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._receiving = True
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            self._close()
            return
        try:
            for event in events:
                self._event(event)
        finally:
            self._receiving = False
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.wake()
            stream.events.reset()

    # -- what the gRPC layer calls ---------------------------------------------------------------

    @property
    def peer(self) -> str:
        if self._peer is None:
            info = None if self._transport is None else self._transport.get_extra_info("peername")
            self._peer = str(info[0]) if isinstance(info, tuple) and info else "unknown"
        return self._peer

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def send_headers(self, stream_id: int, block: bytes, end_stream: bool = False) -> None:
        if stream_id in self._streams:
            self._h2.send_headers(stream_id, header_list(block), end_stream=end_stream)
            if end_stream:
                self._ended(stream_id)
            self._written()

    def send_data(self, stream_id: int, data: bytes) -> bool:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.outbound.append(memoryview(data))
            stream.queued += len(data)
            self._pump(stream_id, stream)
        return True

    def send_trailers(self, stream_id: int, block: bytes) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.trailers = header_list(block)
            self._pump(stream_id, stream)

    def respond(self, stream_id: int, headers: bytes, body: bytes, trailers: bytes) -> bool:
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._h2.send_headers(stream_id, header_list(headers))
            stream.trailers = header_list(trailers)
            stream.outbound.append(memoryview(body))
            stream.queued += len(body)
            self._pump(stream_id, stream)
        return True

    def consumed(self, stream_id: int, size: int) -> None:
        if size > 0 and stream_id in self._streams:
            try:
                self._h2.acknowledge_received_data(size, stream_id)
            except h2.exceptions.StreamClosedError:
                return
            self._written()

    async def writable(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        while stream is not None and stream.queued >= STREAM_SEND_BUFFER:
            stream.drained = asyncio.get_running_loop().create_future()
            await stream.drained
            stream = self._streams.get(stream_id)

    def refused(self, limit: str) -> None:
        pass

    def delivered(self) -> None:
        pass

    def shutdown(self) -> None:
        self._draining = True
        self._h2.close_connection()
        self._flush()
        if not self._streams:
            self._close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- inside ------------------------------------------------------------------------------------

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            stream_id = event.stream_id
            stream = self._streams[stream_id] = _Stream(None)
            headers = cast(list[tuple[bytes, bytes]], event.headers)
            stream.events = self._opener(self, stream_id, headers)
            if event.stream_ended is not None and stream_id in self._streams:
                stream.events.end()
        elif isinstance(event, h2.events.DataReceived):
            stream = self._streams.get(event.stream_id)
            padding = event.flow_controlled_length - len(event.data)
            if padding:
                self._h2.acknowledge_received_data(padding, event.stream_id)
            if stream is not None:
                stream.events.data(memoryview(event.data))
                if event.stream_ended is not None and event.stream_id in self._streams:
                    stream.events.end()
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                stream.wake()
                stream.events.reset()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            for stream_id, stream in list(self._streams.items()):
                if stream.outbound:
                    self._pump(stream_id, stream)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._draining = True
            if not self._streams:
                self._close()

    def _pump(self, stream_id: int, stream: _Stream) -> None:
        h2conn = self._h2
        while stream.outbound:
            room = min(h2conn.local_flow_control_window(stream_id), h2conn.max_outbound_frame_size)
            if room <= 0:
                break
            data = stream.outbound[0]
            piece = data[:room]
            h2conn.send_data(stream_id, piece)
            stream.queued -= len(piece)
            if len(piece) < len(data):
                stream.outbound[0] = data[len(piece) :]
            else:
                stream.outbound.popleft()
        if stream.queued < STREAM_SEND_BUFFER:
            stream.wake()
        if not stream.outbound and stream.trailers is not None:
            trailers, stream.trailers = stream.trailers, None
            h2conn.send_headers(stream_id, trailers, end_stream=True)
            self._ended(stream_id)
        self._written()

    def _ended(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            stream.wake()
        if self._draining and not self._streams:
            self._flush()
            self._close()

    def _written(self) -> None:
        if not self._receiving and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
