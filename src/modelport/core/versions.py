"""One model version and the phase it is in, each phase carrying exactly its own data.

    Loading --> Ready(handle) --> Draining(loaded) --> Unloaded
        \\--> Failed(reason)

A version starts Loading; a load ends Ready (with the handle frontends get, which holds the
loaded model, its scheduler, guard and recorder) or Failed (with the reason). When retired it
turns Draining: it takes no new requests, and is closed only after the requests already in it
have finished, ending Unloaded. The wire states (Triton's) are LOADING, READY, UNAVAILABLE
(draining or unloaded) and FAILED.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from modelport.core.admission import Admission
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


@dataclass(frozen=True, slots=True)
class Batched:
    """A model file's version: its instances and the batcher that feeds them."""

    host: ModelHost
    batcher: DynamicBatcher


@dataclass(frozen=True, slots=True)
class Planned:
    """A pipeline's version: a plan over other models, run step by step through the plane."""

    pipeline: Pipeline


@dataclass(frozen=True, slots=True)
class Loaded:
    """Everything a READY version serves with."""

    platform: str
    triton_platform: str
    signature: ServingSignature
    guard: InputGuard
    recorder: VersionRecorder
    work: Batched | Planned


@dataclass(frozen=True, slots=True)
class Loading:
    state = ModelState.LOADING


@dataclass(frozen=True, slots=True)
class Ready:
    handle: ModelHandle
    note: str = ""
    """Why a newer load of the same version is not serving (the old load serves on)."""
    state = ModelState.READY


@dataclass(frozen=True, slots=True)
class Draining:
    loaded: Loaded
    state = ModelState.UNAVAILABLE


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str
    state = ModelState.FAILED


@dataclass(frozen=True, slots=True)
class Unloaded:
    state = ModelState.UNAVAILABLE


Phase = Loading | Ready | Draining | Failed | Unloaded


@dataclass(slots=True, eq=False)
class ModelVersion:
    name: str
    number: int
    path: Path
    config: ModelConfig
    fingerprint: str = ""
    """The version directory's file listing (names, sizes, times) when it was read."""
    phase: Phase = field(default_factory=Loading)
    stats: VersionStats = field(default_factory=VersionStats)
    admission: Admission = field(default_factory=Admission)
    """The model's limits, the same object for every version of it (the manager's record's)."""
    in_flight: int = 0
    _idle: asyncio.Event | None = None

    @property
    def label(self) -> str:
        """The number as the protocols write it ("3"); not a routing label."""
        return str(self.number)

    @property
    def state(self) -> ModelState:
        return self.phase.state

    @property
    def reason(self) -> str:
        phase = self.phase
        if isinstance(phase, Failed):
            return phase.reason
        return phase.note if isinstance(phase, Ready) else ""

    @property
    def ready(self) -> bool:
        return isinstance(self.phase, Ready)

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

    def retire(self) -> Loaded | None:
        """Take no new requests; returns what must be drained and closed, if anything."""
        phase = self.phase
        if isinstance(phase, Ready):
            phase = self.phase = Draining(phase.handle._loaded)
        if isinstance(phase, Draining):
            return phase.loaded
        self.phase = Unloaded()
        return None

    async def close(self) -> None:
        """Stop the scheduler and release the model (after drained())."""
        phase = self.phase
        self.phase = Unloaded()
        if isinstance(phase, Ready):
            work = phase.handle._loaded.work
        elif isinstance(phase, Draining):
            work = phase.loaded.work
        else:
            return
        if isinstance(work, Batched):
            await work.batcher.close()
            await asyncio.to_thread(work.host.close)


class ModelHandle:
    """A READY model version as frontends see it: what they need to decode and answer requests
    for it. Made once per load; only the data plane runs it (through `_version`, `_loaded`)."""

    __slots__ = (
        "_admission",
        "_loaded",
        "_version",
        "config",
        "guard",
        "name",
        "signature",
        "version",
    )

    def __init__(self, version: ModelVersion, loaded: Loaded) -> None:
        self._version = version
        self._loaded = loaded
        self._admission = version.admission
        self.name = version.name
        self.version = version.label
        """The version number as the protocols write it ("1")."""
        self.config = version.config
        self.guard = loaded.guard
        self.signature = loaded.signature

    @property
    def platform(self) -> str:
        return self._loaded.platform

    @property
    def triton_platform(self) -> str:
        return self._loaded.triton_platform

    @property
    def serving(self) -> bool:
        """Whether this load still takes requests (False once it was retired or replaced)."""
        phase = self._version.phase
        return isinstance(phase, Ready) and phase.handle is self


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
    version: ModelVersion,
    host: ModelHost,
    signature: ServingSignature,
    recorder: VersionRecorder,
) -> DynamicBatcher:
    """The batcher that queues this version's requests and hands batches to its host."""
    config = version.config
    batching = config.dynamic_batching
    stats = version.stats

    def executed(batch_size: int, infer_ns: int) -> None:
        stats.record_execution(batch_size=batch_size, infer_ns=infer_ns)
        recorder.execution(batch_size)

    label = f"model '{version.name}' version {version.number}"
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
