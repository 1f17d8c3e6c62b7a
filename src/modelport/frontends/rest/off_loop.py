"""Decoding and encoding large bodies in a worker thread, a few at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

OFF_LOOP_BYTES = 256 * 1024
LARGE_BODIES_AT_ONCE = 2
Result = TypeVar("Result")


class OffLoop:
    """Small bodies are handled inline (a thread hop would cost more than the work); large ones
    in a worker thread, at most LARGE_BODIES_AT_ONCE at a time, so one big request cannot stall
    the event loop for the others."""

    def __init__(self) -> None:
        self._large_bodies = asyncio.Semaphore(LARGE_BODIES_AT_ONCE)

    async def run(self, function: Callable[..., Result], *args: Any) -> Result:
        async with self._large_bodies:
            return await asyncio.to_thread(function, *args)

    async def run_if_large(self, size: int, function: Callable[..., Result], *args: Any) -> Result:
        if size < OFF_LOOP_BYTES:
            return function(*args)
        return await self.run(function, *args)
