"""ModelManager: which model versions exist, their states, and loading them through runtimes."""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from modelport.core.batcher import DynamicBatcher
from modelport.core.config import ModelConfig
from modelport.core.errors import (
    ConfigError,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ModelportError,
)
from modelport.core.runtime import LoadedModel, Runtime
from modelport.core.signature import ServingSignature, resolve_signature
from modelport.core.stats import VersionStats
from modelport.core.validate import InputGuard, Limits

log = logging.getLogger("modelport.models")

_VERSION = re.compile(r"[1-9][0-9]{0,17}")


class ModelState(enum.StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    FAILED = "FAILED"


@dataclass(slots=True)
class ModelDefinition:
    """What the repository says about one model: its config and its version directories."""

    name: str
    config: ModelConfig
    versions: dict[int, Path]
    error: str | None = None
    """Set when the model's directory or config is unusable; every version is then FAILED."""


class ModelSource(Protocol):
    """Where model definitions come from (the on-disk repository implements it)."""

    def model_names(self) -> list[str]: ...

    def read(self, name: str) -> ModelDefinition: ...

    def contains(self, path: Path) -> bool:
        """Whether path (symlinks resolved) lies inside the source, so it may be opened."""
        ...


class RuntimeResolver(Protocol):
    def runtime_for(self, version_dir: Path, config: ModelConfig) -> Runtime: ...


class VersionRecorder(Protocol):
    def success(
        self, latency_s: float, compute_s: float, queue_s: float, batch_size: int
    ) -> None: ...

    def failure(self, latency_s: float, reason: str) -> None: ...

    def execution(self, batch_size: int) -> None: ...

    def in_flight(self, delta: int) -> None: ...


class InferenceObserver(Protocol):
    """Receives what happens to models and requests (observability implements it)."""

    def recorder(self, model: str, version: str) -> VersionRecorder: ...

    def model_state(self, model: str, version: str, state: str) -> None: ...


@dataclass(slots=True)
class ModelVersion:
    name: str
    version: int
    path: Path
    config: ModelConfig
    state: ModelState = ModelState.LOADING
    reason: str = ""
    platform: str = ""
    triton_platform: str = ""
    model: LoadedModel | None = None
    signature: ServingSignature | None = None
    guard: InputGuard | None = None
    recorder: VersionRecorder | None = None
    batcher: DynamicBatcher | None = None
    executor: ThreadPoolExecutor | None = None
    stats: VersionStats = field(default_factory=VersionStats)

    @property
    def version_str(self) -> str:
        return str(self.version)

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY


class ModelManager:
    def __init__(
        self,
        source: ModelSource,
        runtimes: RuntimeResolver,
        observer: InferenceObserver,
        limits: Limits,
    ) -> None:
        self._source = source
        self._runtimes = runtimes
        self._observer = observer
        self._limits = limits
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._errors: dict[str, str] = {}

    async def load_all(self) -> None:
        """Load every model the source lists, one version at a time, off the event loop."""
        for name in self._source.model_names():
            await self.load_model(name)

    async def load_model(self, name: str) -> None:
        definition = await asyncio.to_thread(self._source.read, name)
        if definition.error:
            self._errors[name] = definition.error
            log.error("model %s cannot be served: %s", name, definition.error)
            self._models.setdefault(name, {})
            return
        chosen = definition.config.version_policy.select(list(definition.versions))
        versions = self._models.setdefault(name, {})
        for number in chosen:
            entry = ModelVersion(name, number, definition.versions[number], definition.config)
            versions[number] = entry
            self._set_state(entry, ModelState.LOADING)
            await asyncio.to_thread(self._load_version, entry)
        if not chosen:
            self._errors[name] = "no version directory matches the version policy"
            log.error("model %s has no version to serve", name)

    def _load_version(self, entry: ModelVersion) -> None:
        try:
            runtime = self._runtimes.runtime_for(entry.path, entry.config)
            model_file = runtime.find_model_file(entry.path, entry.config)
            if model_file is not None and not self._source.contains(model_file):
                raise ModelLoadError(f"{model_file.name} links outside the model repository")
            model = runtime.load(entry.path, entry.config)
            try:
                signature = resolve_signature(model.signature(), entry.config)
            except ModelportError:
                model.close()
                raise
        except ModelportError as exc:
            self._fail(entry, exc.message)
            return
        except Exception as exc:  # a runtime's own error: report it, keep serving the rest
            self._fail(entry, f"{type(exc).__name__}: {exc}")
            return
        try:
            signature = _apply_batching(signature, entry.config)
        except ModelportError as exc:
            model.close()
            self._fail(entry, exc.message)
            return
        entry.platform = runtime.platform
        entry.triton_platform = runtime.triton_platform
        entry.model = model
        entry.signature = signature
        entry.guard = InputGuard(
            signature.inputs, signature.outputs, signature.max_batch_size, self._limits
        )
        entry.recorder = self._observer.recorder(entry.name, entry.version_str)
        entry.executor, entry.batcher = _scheduler(entry, model, signature)
        self._set_state(entry, ModelState.READY)
        log.info("model %s version %d is READY (%s)", entry.name, entry.version, runtime.platform)

    def _fail(self, entry: ModelVersion, reason: str) -> None:
        entry.reason = reason
        self._set_state(entry, ModelState.FAILED)
        log.error("model %s version %d failed to load: %s", entry.name, entry.version, reason)

    def _set_state(self, entry: ModelVersion, state: ModelState) -> None:
        entry.state = state
        self._observer.model_state(entry.name, entry.version_str, state.value)

    def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        """The version a request should run on; raises if it is unknown or not ready."""
        versions = self._models.get(name)
        if versions is None:
            raise ModelNotFound(f"unknown model '{name}'")
        if version in (None, ""):
            ready = [v for v in versions.values() if v.ready]
            if not ready:
                reason = self._errors.get(name) or _reasons(versions.values())
                raise ModelNotReady(f"model '{name}' has no ready version{reason}")
            return max(ready, key=lambda v: v.version)
        entry = versions.get(_parse_version(name, version))
        if entry is None:
            raise ModelNotFound(f"unknown version '{version}' of model '{name}'")
        if not entry.ready:
            detail = f": {entry.reason}" if entry.reason else ""
            raise ModelNotReady(f"model '{name}' version {version} is {entry.state.value}{detail}")
        return entry

    def find(self, name: str, version: str | None = None) -> ModelVersion | None:
        """Like resolve, but returns None instead of raising when nothing is ready."""
        try:
            return self.resolve(name, version)
        except ModelportError:
            return None

    def versions(self, name: str) -> list[ModelVersion]:
        if name not in self._models:
            raise ModelNotFound(f"unknown model '{name}'")
        return sorted(self._models[name].values(), key=lambda v: v.version)

    def all_versions(self) -> Iterable[ModelVersion]:
        for versions in self._models.values():
            yield from versions.values()

    def index(self) -> list[dict[str, Any]]:
        """One row per model version (and one per model that could not be read), Triton's shape."""
        rows: list[dict[str, Any]] = []
        for name in sorted(self._models):
            versions = self._models[name]
            if not versions:
                rows.append(
                    {"name": name, "state": "UNAVAILABLE", "reason": self._errors.get(name, "")}
                )
            for entry in sorted(versions.values(), key=lambda v: v.version):
                rows.append(
                    {
                        "name": name,
                        "version": entry.version_str,
                        "state": entry.state.value,
                        "reason": entry.reason,
                    }
                )
        return rows

    def failed(self) -> list[str]:
        names = [
            f"{v.name}/{v.version}" for v in self.all_versions() if v.state is ModelState.FAILED
        ]
        return names + [name for name in self._errors]

    async def close(self) -> None:
        for entry in list(self.all_versions()):
            entry.state = ModelState.UNAVAILABLE
            if entry.batcher is not None:
                await entry.batcher.close()
            if entry.executor is not None:
                entry.executor.shutdown(wait=True)
            if entry.model is not None:
                entry.model.close()
                entry.model = None


def _apply_batching(signature: ServingSignature, config: ModelConfig) -> ServingSignature:
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


def _scheduler(
    entry: ModelVersion, model: LoadedModel, signature: ServingSignature
) -> tuple[ThreadPoolExecutor, DynamicBatcher]:
    config = entry.config
    batching = config.dynamic_batching
    stats, recorder = entry.stats, entry.recorder
    assert recorder is not None

    def executed(batch_size: int, infer_ns: int) -> None:
        stats.record_execution(batch_size=batch_size, infer_ns=infer_ns)
        recorder.execution(batch_size)

    label = f"model '{entry.name}' version {entry.version}"
    executor = ThreadPoolExecutor(
        max_workers=config.instance_count, thread_name_prefix=f"{entry.name}-{entry.version}"
    )
    batcher = DynamicBatcher(
        label,
        model.infer,
        executor,
        batched=batching is not None,
        max_batch_size=signature.max_batch_size,
        max_queue_delay=batching.max_queue_delay if batching else 0.0,
        preferred_batch_sizes=batching.preferred_batch_sizes if batching else (),
        max_queue_size=batching.max_queue_size if batching else None,
        instances=config.instance_count,
        on_execution=executed,
    )
    return executor, batcher


def _parse_version(name: str, version: str) -> int:
    if not _VERSION.fullmatch(version):
        raise ModelNotFound(
            f"unknown version '{version}' of model '{name}' (versions are positive integers)"
        )
    return int(version)


def _reasons(versions: Iterable[ModelVersion]) -> str:
    failed = [f"version {v.version}: {v.reason}" for v in versions if v.reason]
    return f" ({'; '.join(failed)})" if failed else ""


__all__ = [
    "InferenceObserver",
    "ModelDefinition",
    "ModelLoadError",
    "ModelManager",
    "ModelSource",
    "ModelState",
    "ModelVersion",
    "RuntimeResolver",
    "VersionRecorder",
]
