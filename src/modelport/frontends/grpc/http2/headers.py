"""Request header blocks: HPACK decoding (the hpack package) with a cache for repeated blocks."""

from __future__ import annotations

from typing import cast

import hpack

from modelport.frontends.grpc.http2.frames import ConnectionFailure, ErrorCode

Headers = list[tuple[bytes, bytes]]
# Header blocks made only of one-byte indexed fields (0x81-0xFE) change no HPACK state, so the
# same bytes decode to the same headers until the dynamic table changes: worth caching.
_INDEXED_ONLY = bytes(range(0x81, 0xFF))
_CACHE_SIZE = 256


class HeaderDecoder:
    """One connection's HPACK state. Every block must pass through here, in order, even those
    of streams we refuse, or the dynamic table falls out of step with the peer's encoder."""

    def __init__(self, max_header_list_size: int, max_block: int) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=max_header_list_size)
        self._max_block = max_block
        self._cache: dict[bytes, Headers] = {}

    def check_size(self, size: int) -> None:
        """A block still arriving in CONTINUATION frames must not grow without bound."""
        if size > self._max_block:
            raise ConnectionFailure(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")

    def decode(self, block: bytes) -> Headers:
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        try:
            # hpack annotates the str and the raw (bytes) modes alike as an Iterable of
            # HeaderTuple; what it returns is a list of those (tuple subclasses) of bytes.
            headers = cast(Headers, self._decoder.decode(block, raw=True))
        except hpack.HPACKError as exc:
            raise ConnectionFailure(ErrorCode.COMPRESSION_ERROR, f"bad headers: {exc}") from None
        if block.translate(None, _INDEXED_ONLY):
            self._cache.clear()  # a literal may have changed the dynamic table
        else:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[block] = headers
        return headers
