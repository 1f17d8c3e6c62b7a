"""gzip/deflate bodies and gRPC messages, as tritonclient sends and accepts them.

Decompression is bounded: a small compressed body that inflates past the request size limit is
refused with 413 without ever holding more than the limit in memory. The async forms keep the
event loop free: up to OffLoop.inline_bytes (OFF_LOOP_BYTES) are inflated inline (most compressed
requests end there, with no thread hop), and the rest, a bomb's included, in a worker thread in
one of OffLoop's compression slots; answers of that size or more are compressed there too.
"""

from __future__ import annotations

import zlib

from modelport.core.errors import InvalidInput, PayloadTooLarge
from modelport.frontends.off_loop import OffLoop

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_CHUNK = 1 << 20


class _Inflation:
    """One body being inflated, in steps that each produce at most a given number of bytes."""

    def __init__(self, body: bytes, encoding: str, wbits: int, limit: int) -> None:
        self._encoding = encoding
        self._limit = limit
        self._inflater = zlib.decompressobj(wbits)
        self._pending = body
        self._parts: list[bytes] = []
        self._total = 0

    def advance(self, budget: int) -> bool:
        """Inflate about `budget` more bytes; True when the body is done. Raises PayloadTooLarge
        past the limit, InvalidInput on a bad stream."""
        inflater, stop = self._inflater, self._total + budget
        try:
            while not inflater.eof and self._total < stop:
                room = min(_CHUNK, self._limit - self._total + 1, stop - self._total)
                part = inflater.decompress(self._pending, room)
                self._total += len(part)
                if self._total > self._limit:
                    raise PayloadTooLarge(
                        f"decompressed request body exceeds the limit of {self._limit}"
                    )
                self._parts.append(part)
                self._pending = inflater.unconsumed_tail
                if len(part) < room and not self._pending:
                    break  # all input used and no output held back: nothing more will come
        except zlib.error as exc:
            raise InvalidInput(f"the request body is not valid {self._encoding}: {exc}") from None
        if not inflater.eof:
            if self._total >= stop:
                return False
            raise InvalidInput(f"the {self._encoding} request body is truncated")
        if inflater.unused_data:
            raise InvalidInput(f"the {self._encoding} request body has data after its end")
        return True

    def finish(self) -> bytes:
        """The rest of the body, inflated (in whichever thread calls this)."""
        self.advance(self._limit + 1)
        return self.result()

    def result(self) -> bytes:
        return self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)


def _inflation(body: bytes, content_encoding: str | None, limit: int) -> _Inflation | None:
    """None for an identity body; refuses encodings other than gzip and deflate."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return None
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise InvalidInput(
            f"unsupported Content-Encoding {content_encoding!r} (use gzip, deflate or identity)"
        )
    return _Inflation(body, encoding, wbits, limit)


def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body inflated in the calling thread (at most `limit` bytes, else PayloadTooLarge)."""
    inflation = _inflation(body, content_encoding, limit)
    return body if inflation is None else inflation.finish()


async def decode_body_off_loop(
    body: bytes, content_encoding: str | None, limit: int, off_loop: OffLoop
) -> bytes:
    """decode_body, with the loop doing at most `off_loop.inline_bytes` of the work: a small
    compressed body is inflated inline; a large one, or one that inflates past that, finishes
    in a worker thread (a few at a time), still stopping at `limit`. gRPC messages can take
    this path as they are: the same function, the same bounds."""
    inflation = _inflation(body, content_encoding, limit)
    if inflation is None:
        return body
    inline = off_loop.inline_bytes
    if len(body) < inline and inflation.advance(inline):
        return inflation.result()
    return await off_loop.run_compression(inflation.finish)


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


async def encode_body_off_loop(body: bytes, encoding: str, off_loop: OffLoop) -> bytes:
    """encode_body; a body of `off_loop.inline_bytes` or more is compressed in a worker thread."""
    if len(body) < off_loop.inline_bytes:
        return encode_body(body, encoding)
    return await off_loop.run_compression(encode_body, body, encoding)
