"""Follows the model repository (`--model-control-mode poll`): models and versions that appear,
change or disappear on disk are loaded, reloaded or retired while the server keeps serving."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from modelport.core.errors import ModelNotFound

log = logging.getLogger("modelport.repository")

Sleep = Callable[[float], Awaitable[None]]
"""How the poller waits: asyncio.sleep, or a test's clock that lets each wait end on demand."""


class WatchedSource(Protocol):
    def model_names(self) -> list[str]: ...

    def model_fingerprint(self, name: str) -> str: ...


class SyncedModels(Protocol):
    """What the poller asks of the model manager (core's ModelManager is one)."""

    def sync(self, name: str) -> Awaitable[object]:
        """Bring what serves of the model in line with the repository."""
        ...

    def remove(self, name: str) -> Awaitable[object]:
        """The model left the repository: unload it."""
        ...


class RepositoryPoller:
    """Every `interval` seconds, compare each model directory's fingerprint with the one it had
    when it was last synced. A changed directory is looked at again after `settle` seconds and
    synced only if it stayed the same, so a version still being copied is not loaded half-way
    (publishing by rename, as `modelport deploy` does, never shows a partial version at all).

    Both waits go through `sleep`, so a test can end each one on demand: a wait of `interval`
    that begins means the previous round is over."""

    def __init__(
        self,
        source: WatchedSource,
        manager: SyncedModels,
        interval: float,
        settle: float | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._source = source
        self._manager = manager
        self.interval = interval
        self.settle = min(0.5, interval / 4) if settle is None else settle
        self._sleep = sleep
        self._synced: dict[str, str] = {}

    async def snapshot(self) -> None:
        """Record the repository as it is now (call before the initial load, so a change made
        while that load runs is seen by the first poll)."""
        self._synced = await asyncio.to_thread(self._scan)

    async def run(self) -> None:
        while True:
            await self._sleep(self.interval)
            try:
                await self.poll_once()
            except Exception:  # one bad poll must not end polling
                log.exception("polling the model repository failed")

    async def poll_once(self) -> None:
        seen = await asyncio.to_thread(self._scan)
        for name in sorted(set(self._synced) - set(seen)):
            log.info("model %s left the repository: unloading it", name)
            await self._manager.remove(name)
            del self._synced[name]
        changed = [name for name, digest in seen.items() if self._synced.get(name) != digest]
        if not changed:
            return
        await self._sleep(self.settle)
        for name in changed:
            digest = await asyncio.to_thread(self._source.model_fingerprint, name)
            if digest != seen[name]:
                log.info("model %s is still changing; looking again at the next poll", name)
                continue
            log.info("model %s changed on disk: syncing it", name)
            try:
                await self._manager.sync(name)
            except ModelNotFound:
                continue
            self._synced[name] = digest

    def _scan(self) -> dict[str, str]:
        digests = {}
        for name in self._source.model_names():
            digest = self._source.model_fingerprint(name)
            if digest:
                digests[name] = digest
        return digests
