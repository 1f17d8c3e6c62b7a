from __future__ import annotations

import gzip
import zlib

import pytest

from modelport.core.errors import InvalidInput, PayloadTooLarge
from modelport.frontends.compression import choose_encoding, decode_body, encode_body


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_round_trip(encoding: str) -> None:
    body = b'{"inputs": []}' * 100
    assert decode_body(encode_body(body, encoding), encoding, 1 << 20) == body


def test_identity_and_missing_encoding_pass_through() -> None:
    assert decode_body(b"abc", None, 10) == b"abc"
    assert decode_body(b"abc", "identity", 10) == b"abc"


def test_a_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b"\0" * (50 << 20))  # 50 MiB of zeros in ~50 KB
    assert len(bomb) < 100_000
    with pytest.raises(PayloadTooLarge, match="exceeds the limit of 1048576"):
        decode_body(bomb, "gzip", 1 << 20)


def test_bad_streams_are_named() -> None:
    with pytest.raises(InvalidInput, match="not valid gzip"):
        decode_body(b"not gzip at all", "gzip", 1000)
    with pytest.raises(InvalidInput, match="truncated"):
        decode_body(zlib.compress(b"x" * 1000)[:-6], "deflate", 10_000)
    with pytest.raises(InvalidInput, match="unsupported Content-Encoding 'br'"):
        decode_body(b"", "br", 10)


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        (None, None),
        ("", None),
        ("br", None),
        ("gzip", "gzip"),
        ("br, deflate", "deflate"),
        ("gzip;q=0, deflate", "deflate"),
        ("identity", None),
    ],
)
def test_accept_encoding(header: str | None, chosen: str | None) -> None:
    assert choose_encoding(header) == chosen
