from __future__ import annotations

import asyncio
import gzip
import random
import threading
import time
import zlib

import pytest

from modelport.core.errors import InvalidInput, PayloadTooLarge
from modelport.frontends import compression
from modelport.frontends.compression import (
    choose_encoding,
    decode_body,
    decode_body_off_loop,
    encode_body,
    encode_body_off_loop,
)
from modelport.frontends.off_loop import COMPRESSIONS_AT_ONCE, OFF_LOOP_BYTES, OffLoop


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


class _ThreadRecorder:
    """Wraps zlib's (de)compressor objects to note which thread did each piece of the work."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.threads: list[threading.Thread] = []
        real_decompressobj, real_compressobj = zlib.decompressobj, zlib.compressobj
        recorder = self

        class Inflater:
            def __init__(self, wbits: int) -> None:
                self._real = real_decompressobj(wbits)

            def decompress(self, data: bytes, max_length: int = 0) -> bytes:
                recorder.threads.append(threading.current_thread())
                return self._real.decompress(data, max_length)

            def __getattr__(self, name: str) -> object:  # eof, unconsumed_tail, unused_data
                return getattr(self._real, name)

        class Compressor:
            def __init__(self, *args: int) -> None:
                self._real = real_compressobj(*args)

            def compress(self, data: bytes) -> bytes:
                recorder.threads.append(threading.current_thread())
                return self._real.compress(data)

            def flush(self) -> bytes:
                return self._real.flush()

        monkeypatch.setattr(compression.zlib, "decompressobj", Inflater)
        monkeypatch.setattr(compression.zlib, "compressobj", Compressor)

    def on_loop(self) -> list[bool]:
        """For each piece of work, whether the event loop's thread (the main one here) did it."""
        return [thread is threading.main_thread() for thread in self.threads]


def _inflate(body: bytes, limit: int = 1 << 30) -> bytes:
    async def main() -> bytes:
        return await decode_body_off_loop(body, "gzip", limit, OffLoop())

    return asyncio.run(main())


def test_a_small_body_is_inflated_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = _ThreadRecorder(monkeypatch)
    body = b'{"inputs": []}' * 1000
    assert _inflate(gzip.compress(body)) == body
    assert recorder.on_loop() and all(recorder.on_loop())


def test_a_body_that_inflates_past_the_inline_size_finishes_in_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = _ThreadRecorder(monkeypatch)
    body = b"\0" * (3 * OFF_LOOP_BYTES)
    packed = gzip.compress(body)
    assert len(packed) < OFF_LOOP_BYTES  # small on the wire, so it starts inline
    assert _inflate(packed) == body
    on_loop = recorder.on_loop()
    assert on_loop[0] and not on_loop[-1]
    assert True not in on_loop[on_loop.index(False) :]  # once in the thread, it stays there


def test_a_large_compressed_body_is_inflated_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = _ThreadRecorder(monkeypatch)
    body = random.Random(3).randbytes(2 * OFF_LOOP_BYTES)  # does not compress: large on the wire
    assert _inflate(gzip.compress(body)) == body
    assert recorder.on_loop() and not any(recorder.on_loop())


def test_a_bomb_off_the_loop_still_stops_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = _ThreadRecorder(monkeypatch)
    bomb = gzip.compress(b"\0" * (50 << 20))
    with pytest.raises(PayloadTooLarge, match="exceeds the limit of 2097152"):
        _inflate(bomb, limit=2 << 20)
    assert False in recorder.on_loop()
    assert len(recorder.threads) <= 4  # 256 KiB inline, then 1 MiB steps up to the limit


def test_bad_streams_are_named_off_the_loop_too() -> None:
    with pytest.raises(InvalidInput, match="truncated"):
        _inflate(gzip.compress(random.Random(4).randbytes(OFF_LOOP_BYTES))[:-100])
    with pytest.raises(InvalidInput, match="data after its end"):
        _inflate(gzip.compress(b"a" * 100) + b"more")
    assert _inflate(gzip.compress(b"")) == b""


@pytest.mark.parametrize(("size", "inline"), [(OFF_LOOP_BYTES - 1, True), (OFF_LOOP_BYTES, False)])
def test_answers_are_compressed_in_a_thread_when_large(
    monkeypatch: pytest.MonkeyPatch, size: int, inline: bool
) -> None:
    recorder = _ThreadRecorder(monkeypatch)
    body = b"x" * size

    async def main() -> bytes:
        return await encode_body_off_loop(body, "gzip", OffLoop())

    packed = asyncio.run(main())
    assert recorder.on_loop() == [inline]
    assert gzip.decompress(packed) == body


def test_compression_work_runs_a_few_at_a_time() -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    async def main() -> None:
        off_loop = OffLoop()
        await asyncio.gather(*(off_loop.run_compression(work) for _ in range(6)))

    asyncio.run(main())
    assert most == COMPRESSIONS_AT_ONCE
