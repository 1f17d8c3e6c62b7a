"""Decoding, encoding and (de)compressing large bodies in a worker thread, a few at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

OFF_LOOP_BYTES = 256 * 1024
LARGE_BODIES_AT_ONCE = 2
COMPRESSIONS_AT_ONCE = 2
Result = TypeVar("Result")


class OffLoop:
    """Small bodies are handled inline (a thread hop would cost more than the work); large ones
    in a worker thread, at most LARGE_BODIES_AT_ONCE at a time, so one big request cannot stall
    the event loop for the others. gzip/deflate work has slots of its own (COMPRESSIONS_AT_ONCE),
    so clients sending compression bombs wait for each other, not for the large bodies."""

    def __init__(self, inline_bytes: int = OFF_LOOP_BYTES) -> None:
        self.inline_bytes = inline_bytes
        """Bodies below this size are worked on inline."""
        self._large_bodies = asyncio.Semaphore(LARGE_BODIES_AT_ONCE)
        self._compressions = asyncio.Semaphore(COMPRESSIONS_AT_ONCE)

    async def run(self, function: Callable[..., Result], *args: Any) -> Result:
        async with self._large_bodies:
            return await asyncio.to_thread(function, *args)

    async def run_if_large(self, size: int, function: Callable[..., Result], *args: Any) -> Result:
        if size < self.inline_bytes:
            return function(*args)
        return await self.run(function, *args)

    async def run_compression(self, function: Callable[..., Result], *args: Any) -> Result:
        """`function` (inflating or compressing) in a worker thread, in a compression slot."""
        async with self._compressions:
            return await asyncio.to_thread(function, *args)
