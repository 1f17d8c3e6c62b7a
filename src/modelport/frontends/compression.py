"""gzip/deflate bodies and gRPC messages, as tritonclient sends and accepts them.

Decompression is bounded: a small compressed body that inflates past the request size limit is
refused with 413 without ever holding more than the limit in memory.
"""

from __future__ import annotations

import zlib

from modelport.core.errors import InvalidInput, PayloadTooLarge

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_CHUNK = 1 << 20


def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise InvalidInput(
            f"unsupported Content-Encoding {content_encoding!r} (use gzip, deflate or identity)"
        )
    inflater = zlib.decompressobj(wbits)
    parts, total, pending = [], 0, body
    try:
        while pending:
            part = inflater.decompress(pending, min(_CHUNK, limit - total + 1))
            total += len(part)
            if total > limit:
                raise PayloadTooLarge(f"decompressed request body exceeds the limit of {limit}")
            parts.append(part)
            pending = inflater.unconsumed_tail
            if not part and not pending:
                break
        if not inflater.eof:
            raise InvalidInput(f"the {encoding} request body is truncated")
        if inflater.unused_data:
            raise InvalidInput(f"the {encoding} request body has data after its end")
    except zlib.error as exc:
        raise InvalidInput(f"the request body is not valid {encoding}: {exc}") from None
    return b"".join(parts)


def choose_encoding(accept_encoding: str | None) -> str | None:
    """gzip or deflate if the client accepts it (first listed wins), else None."""
    if not accept_encoding:
        return None
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        if name in _WBITS and _quality(params) > 0:
            return name
    return None


def _quality(params: str) -> float:
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def encode_body(body: bytes, encoding: str) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, _WBITS[encoding])
    return compressor.compress(body) + compressor.flush()
