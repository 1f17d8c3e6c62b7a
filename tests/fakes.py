"""Fakes for testing the core without files, frameworks or a server: a model source whose
definitions a test edits, runtimes whose loads and runs a test can fail or hold, an observer that
records what it is told."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelport.core.config import ModelConfig, config_from_mapping
from modelport.core.errors import ModelLoadError, ModelNotFound
from modelport.core.manager import ModelDefinition, ModelManager
from modelport.core.runtime import Arrays, Capabilities, LoadedModel, ModelHost, Runtime, Signature
from modelport.core.types import DataType, TensorSpec
from modelport.core.validate import Limits

SPEC_IN = TensorSpec("x", DataType.FP32, (-1, 2))
SPEC_OUT = TensorSpec("y", DataType.FP32, (-1, 2))


class FakeSource:
    """Models as a test writes them: `put(name, versions, config)`; a fingerprint per version
    that `touch` changes, as new files on disk would."""

    def __init__(self) -> None:
        self.models: dict[str, ModelDefinition] = {}

    def put(
        self, name: str, versions: tuple[int, ...] = (1,), config: dict[str, Any] | None = None
    ) -> None:
        old = self.models.get(name)
        fingerprints = {v: (old.fingerprints.get(v, "a") if old else "a") for v in versions}
        self.models[name] = ModelDefinition(
            name,
            config_from_mapping(config or {}, name),
            {v: Path(f"/fake/{name}/{v}") for v in versions},
            None,
            fingerprints,
        )

    def touch(self, name: str, version: int) -> None:
        """The version's files changed."""
        definition = self.models[name]
        definition.fingerprints[version] += "+"

    def model_names(self) -> list[str]:
        return sorted(self.models)

    def read(self, name: str) -> ModelDefinition:
        definition = self.models.get(name)
        if definition is None:
            raise ModelNotFound(f"unknown model '{name}'")
        return ModelDefinition(
            definition.name,
            definition.config,
            dict(definition.versions),
            definition.error,
            dict(definition.fingerprints),
        )

    def contains(self, path: Path) -> bool:
        return True

    def parse_config(self, text: str, name: str) -> ModelConfig:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the load request's config is not JSON: {exc}") from None
        return config_from_mapping(raw, name, "the load request's config")


@dataclass
class FakeHost:
    """A loaded version: doubles its input, or does what the runtime's hooks say."""

    label: str
    runtime: FakeRuntimes
    width: int = 2
    """The inputs' second dimension (config.yaml `parameters: {width: N}`)."""
    kind: str = "thread"
    closed: bool = False
    runs: int = 0

    def signature(self) -> Signature:
        x, y = (TensorSpec(s.name, s.datatype, (-1, self.width)) for s in (SPEC_IN, SPEC_OUT))
        return Signature((x,), (y,))

    async def run(self, inputs: Arrays, outputs: tuple[str, ...] | None) -> tuple[Arrays, int]:
        self.runs += 1
        hold = self.runtime.hold_runs
        if hold is not None:
            self.runtime.run_started.set()
            await hold.wait()
        if self.label in self.runtime.failing_runs:
            raise ValueError("the fake model broke")
        return {"y": inputs["x"] * 2}, 1000

    def close(self) -> None:
        assert not self.closed, f"{self.label} closed twice"
        self.closed = True
        self.runtime.events.append(f"closed {self.label}")


@dataclass
class FakeRuntimes:
    """The RuntimeResolver: loads FakeHosts, labelled "name-version", counted and inspectable.

    `broken` holds labels whose next loads fail; `block_loads` holds loads (they run in worker
    threads) until it is set; `hold_runs` holds runs until it is set."""

    broken: set[str] = field(default_factory=set)
    failing_runs: set[str] = field(default_factory=set)
    hosts: list[FakeHost] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    block_loads: threading.Event | None = None
    loads_waiting: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    hold_runs: asyncio.Event | None = None
    run_started: asyncio.Event = field(default_factory=asyncio.Event)
    _loading: int = 0
    most_loading_at_once: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def runtime_for(self, version_dir: Path, config: ModelConfig) -> Runtime:
        return _FAKE_RUNTIME

    def host(
        self, runtime: Runtime, version_dir: Path, config: ModelConfig, label: str
    ) -> ModelHost:
        with self._lock:
            self._loading += 1
            self.most_loading_at_once = max(self.most_loading_at_once, self._loading)
        try:
            if self.block_loads is not None:
                self.loads_waiting.release()
                self.block_loads.wait(timeout=30)
            if label in self.broken:
                raise ModelLoadError(f"{label} is broken")
            host = FakeHost(label, self, int(config.parameters.get("width", 2)))
            self.hosts.append(host)
            self.events.append(f"loaded {label}")
            return host
        finally:
            with self._lock:
                self._loading -= 1

    def alive(self) -> list[str]:
        return [h.label for h in self.hosts if not h.closed]


class _FakeRuntime:
    platform = "fake"
    triton_platform = "fake_platform"
    capabilities = Capabilities(thread_safe=True, releases_gil=True)

    def find_model_file(self, version_dir: Path, config: ModelConfig) -> Path | None:
        return None

    def load(self, version_dir: Path, config: ModelConfig) -> LoadedModel:
        raise AssertionError("FakeRuntimes.host loads; this is never called")


_FAKE_RUNTIME = _FakeRuntime()


@dataclass
class FakeRecorder:
    observer: FakeObserver
    model: str
    version: str

    def success(self, latency_s: float, compute_s: float, queue_s: float, batch_size: int) -> None:
        self.observer.requests.append((self.model, self.version, "success"))

    def failure(self, latency_s: float, reason: str) -> None:
        self.observer.requests.append((self.model, self.version, reason))

    def execution(self, batch_size: int) -> None:
        pass

    def in_flight(self, delta: int) -> None:
        self.observer.in_flight += delta


@dataclass
class FakeLimitRecorder:
    observer: FakeObserver
    model: str

    def refused(self, limit: str) -> None:
        self.observer.limited.append((self.model, limit))


@dataclass
class FakeObserver:
    states: list[tuple[str, str, str]] = field(default_factory=list)
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    in_flight: int = 0
    on_state: Callable[[str, str, str], None] | None = None
    limited: list[tuple[str, str]] = field(default_factory=list)
    """(model, limit) for each request a model's limits refused."""

    def recorder(self, model: str, version: str) -> FakeRecorder:
        return FakeRecorder(self, model, version)

    def limit_recorder(self, model: str) -> FakeLimitRecorder:
        return FakeLimitRecorder(self, model)

    def model_state(self, model: str, version: str, state: str) -> None:
        self.states.append((model, version, state))
        if self.on_state is not None:
            self.on_state(model, version, state)


@dataclass
class Core:
    source: FakeSource
    runtimes: FakeRuntimes
    observer: FakeObserver
    manager: ModelManager


def make_core(seed: int = 0) -> Core:
    """A manager over fakes (call inside a running event loop: the fakes make asyncio events)."""
    import random

    source, runtimes, observer = FakeSource(), FakeRuntimes(), FakeObserver()
    manager = ModelManager(source, runtimes, observer, Limits(), rng=random.Random(seed))
    return Core(source, runtimes, observer, manager)


def batch(rows: int = 1) -> np.ndarray:
    return np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
