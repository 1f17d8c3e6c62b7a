"""One model version: its state, its loaded model and scheduler, and the count of requests in it.

A version is built LOADING, becomes READY or FAILED once, and when retired turns UNAVAILABLE:
it takes no new requests, and is closed only after the requests already in it have finished.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from modelport.core.batcher import DynamicBatcher
from modelport.core.config import ModelConfig
from modelport.core.errors import ConfigError
from modelport.core.pipeline import Pipeline
from modelport.core.runtime import ModelHost
from modelport.core.signature import ServingSignature
from modelport.core.stats import VersionStats
from modelport.core.validate import InputGuard


class ModelState(enum.StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    FAILED = "FAILED"


class VersionRecorder(Protocol):
    def success(
        self, latency_s: float, compute_s: float, queue_s: float, batch_size: int
    ) -> None: ...

    def failure(self, latency_s: float, reason: str) -> None: ...

    def execution(self, batch_size: int) -> None: ...

    def in_flight(self, delta: int) -> None: ...


@dataclass(slots=True, eq=False)
class ModelVersion:
    name: str
    version: int
    path: Path
    config: ModelConfig
    fingerprint: str = ""
    """The version directory's file listing (names, sizes, times) when it was read."""
    state: ModelState = ModelState.LOADING
    reason: str = ""
    platform: str = ""
    triton_platform: str = ""
    host: ModelHost | None = None
    """Where the loaded model runs; None for a pipeline, which runs other models."""
    pipeline: Pipeline | None = None
    signature: ServingSignature | None = None
    guard: InputGuard | None = None
    recorder: VersionRecorder | None = None
    batcher: DynamicBatcher | None = None
    stats: VersionStats = field(default_factory=VersionStats)
    in_flight: int = 0
    _idle: asyncio.Event | None = None

    @property
    def version_str(self) -> str:
        return str(self.version)

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    def enter(self) -> None:
        """A request starts using this version (called on the event loop, right after the
        readiness check, so a version retired later still waits for it)."""
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def drained(self) -> None:
        """Return once no request is using this version."""
        while self.in_flight:
            self._idle = asyncio.Event()
            await self._idle.wait()

    @property
    def serving(self) -> bool:
        """Whether anything was loaded that must be drained and closed."""
        return self.host is not None or self.pipeline is not None

    async def close(self) -> None:
        """Stop the scheduler and release the model (after drained())."""
        if self.batcher is not None:
            await self.batcher.close()
        host = self.host
        self.batcher = self.host = self.pipeline = None
        if host is not None:
            await asyncio.to_thread(host.close)


def apply_batching(signature: ServingSignature, config: ModelConfig) -> ServingSignature:
    """With dynamic batching on, requests may carry at most the batcher's max batch size."""
    batching = config.dynamic_batching
    if batching is None:
        return signature
    if signature.max_batch_size == 0:
        raise ConfigError(
            "dynamic_batching needs a batch dimension: every input's first dimension must be "
            "dynamic (-1) and max_batch_size must not be 0"
        )
    limit = min(batching.max_batch_size or signature.max_batch_size, signature.max_batch_size)
    return replace(signature, max_batch_size=limit)


def build_scheduler(
    entry: ModelVersion, host: ModelHost, signature: ServingSignature
) -> DynamicBatcher:
    """The batcher that queues this version's requests and hands batches to its host."""
    config = entry.config
    batching = config.dynamic_batching
    stats, recorder = entry.stats, entry.recorder
    assert recorder is not None

    def executed(batch_size: int, infer_ns: int) -> None:
        stats.record_execution(batch_size=batch_size, infer_ns=infer_ns)
        recorder.execution(batch_size)

    label = f"model '{entry.name}' version {entry.version}"
    return DynamicBatcher(
        label,
        host.run,
        batched=batching is not None,
        max_batch_size=signature.max_batch_size,
        max_queue_delay=batching.max_queue_delay if batching else 0.0,
        preferred_batch_sizes=batching.preferred_batch_sizes if batching else (),
        max_queue_size=batching.max_queue_size if batching else None,
        instances=config.instance_count,
        on_execution=executed,
    )
