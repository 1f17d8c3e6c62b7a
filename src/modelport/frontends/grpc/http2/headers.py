"""Request header blocks: HPACK decoding (the hpack package) with a cache for repeated blocks."""

from __future__ import annotations

from typing import cast

import hpack

from modelport.frontends.grpc.http2.frames import ConnectionFailure, ErrorCode
from modelport.frontends.grpc.http2.header_rules import Headers, request_problem

Checked = tuple[Headers, str | None]
"""A request's header list and why it is malformed (None: it is well formed)."""
# A block that leaves the dynamic table as it was (indexed fields, literals not indexed or
# never indexed, as clients send `authorization`) decodes to the same headers every time until
# the table changes: worth caching. A block that changes the table clears the cache.
_CACHE_SIZE = 256


class HeaderDecoder:
    """One connection's HPACK state. Every block must pass through here, in order, even those
    of streams we refuse, or the dynamic table falls out of step with the peer's encoder."""

    def __init__(self, max_header_list_size: int, max_block: int) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=max_header_list_size)
        self._max_block = max_block
        self._cache: dict[bytes, Checked] = {}
        self._known: set[tuple[bytes, bytes]] = set()  # fields found well formed

    def check_size(self, size: int) -> None:
        """A block still arriving in CONTINUATION frames must not grow without bound."""
        if size > self._max_block:
            raise ConnectionFailure(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")

    def decode(self, block: bytes) -> Headers:
        return self.decode_request(block)[0]

    def decode_request(self, block: bytes) -> Checked:
        """The headers, and why they are not a well-formed request (checked once per
        distinct block, then cached with it)."""
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        table = self._decoder.header_table
        entries = table.dynamic_entries
        size, count, newest = table.maxsize, len(entries), entries[0] if entries else None
        try:
            # hpack annotates the str and the raw (bytes) modes alike as an Iterable of
            # HeaderTuple; what it returns is a list of those (tuple subclasses) of bytes.
            headers = cast(Headers, self._decoder.decode(block, raw=True))
        except hpack.HPACKError as exc:
            raise ConnectionFailure(ErrorCode.COMPRESSION_ERROR, f"bad headers: {exc}") from None
        checked = (headers, request_problem(headers, self._known))
        # an entry added goes to the front (even when others are evicted); a size update
        # changes maxsize
        unchanged = (
            table.maxsize == size
            and len(entries) == count
            and (entries[0] if entries else None) is newest
        )
        if not unchanged:
            self._cache.clear()
        else:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[block] = checked
        return checked
