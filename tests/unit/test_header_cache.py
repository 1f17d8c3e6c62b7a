"""The HPACK block cache (frontends/grpc/http2/headers.py): blocks that leave the dynamic table
as it was are decoded once; any block that changes the table empties the cache."""

from __future__ import annotations

import pytest

from modelport.frontends.grpc.http2 import frames as f
from modelport.frontends.grpc.http2.headers import HeaderDecoder


def literal(first: int, name: bytes, value: bytes) -> bytes:
    """A literal with a new name: 0x40 incremental indexing, 0x00 without, 0x10 never indexed."""
    return (
        bytes([first])
        + f.hpack_integer(len(name), 7)
        + name
        + f.hpack_integer(len(value), 7)
        + value
    )


AUTH = literal(0x10, b"authorization", b"Bearer mp_secret")
"""Never indexed, as clients send credentials: changes no table state."""
POST_HTTP = b"\x83\x86"  # :method POST, :scheme http (static table)
NEWEST = b"\xbe"  # index 62: the newest dynamic entry


def decoder() -> HeaderDecoder:
    return HeaderDecoder(max_header_list_size=1 << 16, max_block=1 << 16)


def test_a_block_with_a_never_indexed_key_is_decoded_once() -> None:
    headers = decoder()
    block = POST_HTTP + AUTH
    first = headers.decode(block)
    assert (b"authorization", b"Bearer mp_secret") in first
    assert headers.decode(block) is first  # from the cache


def test_a_cached_block_follows_the_table_after_an_insert() -> None:
    headers = decoder()
    headers.decode(literal(0x40, b":path", b"/a"))  # inserts :path /a at 62
    block = POST_HTTP + NEWEST + AUTH
    assert (b":path", b"/a") in headers.decode(block)
    headers.decode(literal(0x40, b":path", b"/b"))  # now 62 is :path /b
    assert (b":path", b"/b") in headers.decode(block)


def test_a_table_size_update_empties_the_cache() -> None:
    headers = decoder()
    headers.decode(literal(0x40, b":path", b"/a"))
    block = POST_HTTP + NEWEST
    assert (b":path", b"/a") in headers.decode(block)
    headers.decode(b"\x20")  # size update to 0: the table is emptied
    with pytest.raises(f.ConnectionFailure):
        headers.decode(block)  # index 62 no longer exists


def test_literals_not_indexed_leave_the_cache_valid() -> None:
    headers = decoder()
    headers.decode(literal(0x40, b":path", b"/a"))
    block = POST_HTTP + NEWEST + literal(0x00, b"x-trace", b"1")
    first = headers.decode(block)
    assert headers.decode(block) is first
    assert (b":path", b"/a") in first and (b"x-trace", b"1") in first
