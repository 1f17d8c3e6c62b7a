"""ModelManager: which model versions serve, how requests pick one, and changing them live.

Changing what serves follows two rules. A version starts taking requests only once it is READY,
and an old one stops only after its replacement is; retired versions drain before they close.
A failed load never shrinks what serves: the versions that were READY keep serving.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from modelport.core.config import ModelConfig
from modelport.core.errors import (
    LoadFailed,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ModelportError,
)
from modelport.core.pipeline import Pipeline
from modelport.core.runtime import ModelHost, Runtime, Signature
from modelport.core.signature import ServingSignature, resolve_signature
from modelport.core.validate import InputGuard, Limits
from modelport.core.versions import (
    ModelState,
    ModelVersion,
    VersionRecorder,
    apply_batching,
    build_scheduler,
)

log = logging.getLogger("modelport.models")

LOAD_CONCURRENCY = 4
"""Models loaded at once at startup (Triton's model_load_thread_count defaults to 4 too)."""

_VERSION = re.compile(r"[1-9][0-9]{0,17}")
STABLE = "stable"
_NO_CONFIG = ModelConfig()
"""Requests that name no version go to the version with this label when no traffic split is set."""


@dataclass(slots=True)
class ModelDefinition:
    """What the repository says about one model: its config and its version directories."""

    name: str
    config: ModelConfig
    versions: dict[int, Path]
    error: str | None = None
    """Set when the model's directory or config is unusable; nothing new is then loaded."""
    fingerprints: dict[int, str] = field(default_factory=dict)
    """Per version, a digest of its files' names, sizes and times: a change means reload."""


class ModelSource(Protocol):
    """Where model definitions come from (the on-disk repository implements it)."""

    def model_names(self) -> list[str]: ...

    def read(self, name: str) -> ModelDefinition: ...

    def contains(self, path: Path) -> bool:
        """Whether path (symlinks resolved) lies inside the source, so it may be opened."""
        ...


class RuntimeResolver(Protocol):
    def runtime_for(self, version_dir: Path, config: ModelConfig) -> Runtime: ...

    def host(
        self, runtime: Runtime, version_dir: Path, config: ModelConfig, label: str
    ) -> ModelHost:
        """Load the version's instances where the runtime's capabilities say they should run."""
        ...


class InferenceObserver(Protocol):
    """Receives what happens to models and requests (observability implements it)."""

    def recorder(self, model: str, version: str) -> VersionRecorder: ...

    def model_state(self, model: str, version: str, state: str) -> None: ...


@dataclass(slots=True)
class ModelRecord:
    """One model: the versions that serve or are failing, and how requests pick among them."""

    name: str
    config: ModelConfig | None = None
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    error: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def ready_versions(self) -> list[ModelVersion]:
        return [v for v in self.versions.values() if v.ready]


class ModelManager:
    def __init__(
        self,
        source: ModelSource,
        runtimes: RuntimeResolver,
        observer: InferenceObserver,
        limits: Limits,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._source = source
        self._runtimes = runtimes
        self._observer = observer
        self._limits = limits
        self._records: dict[str, ModelRecord] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._rng = rng or random.Random()

    # ---- changing what serves -------------------------------------------------------------

    async def load_all(self, names: Iterable[str] | None = None) -> None:
        """Load the named models (default: every model in the source), a few at a time: loads
        wait on disk, framework imports and worker processes more than on the CPU."""
        if names is None:
            names = await asyncio.to_thread(self._source.model_names)
        slots = asyncio.Semaphore(LOAD_CONCURRENCY)

        async def load(name: str) -> None:
            async with slots:
                try:
                    await self.sync(name)
                except ModelNotFound as exc:
                    log.error("cannot load %s: %s", name, exc.message)

        await asyncio.gather(*(load(name) for name in names))

    async def load(self, name: str, config: ModelConfig | None = None) -> None:
        """Load or reload a model (the model control API); raises if a version failed."""
        failures = await self.sync(name, config)
        if failures:
            raise LoadFailed(f"model '{name}' failed to load: {'; '.join(failures)}")

    async def sync(self, name: str, config: ModelConfig | None = None) -> list[str]:
        """Bring what serves in line with the repository: load new and changed versions, retire
        versions the policy no longer selects. Returns the failures (empty when all is well)."""
        record = self._records.get(name) or self._records.setdefault(name, ModelRecord(name))
        async with record.lock:
            try:
                definition = await asyncio.to_thread(self._source.read, name)
            except ModelNotFound:
                if not record.versions:
                    self._records.pop(name, None)
                raise
            if config is not None:
                definition = replace(definition, config=config, error=None)
            return await self._sync(record, definition)

    async def unload(self, name: str) -> None:
        """Stop serving every version of a model; returns once they have drained and closed."""
        record = self._records.get(name)
        if record is None:
            raise ModelNotFound(f"unknown model '{name}'")
        async with record.lock:
            retired = list(record.versions.values())
            record.versions.clear()
            record.config = None
            record.error = "unloaded"
            await asyncio.gather(*(self._retire(entry) for entry in retired))
        log.info("model %s unloaded", name)

    async def remove(self, name: str) -> None:
        """The model left the repository: unload it and forget it."""
        if name in self._records:
            await self.unload(name)
            self._records.pop(name, None)

    async def _sync(self, record: ModelRecord, definition: ModelDefinition) -> list[str]:
        if definition.error:
            record.error = definition.error
            log.error("model %s cannot be loaded: %s", record.name, definition.error)
            return [definition.error]
        config = definition.config
        chosen = served_versions(config, list(definition.versions))
        record.error = "" if chosen else "no version directory matches the version policy"
        reload_all = record.config is not None and _serving(record.config) != _serving(config)
        record.config = config

        pending: list[ModelVersion] = []
        for number in chosen:
            current = record.versions.get(number)
            fingerprint = definition.fingerprints.get(number, "")
            unchanged = current is not None and current.fingerprint == fingerprint
            if unchanged and current.ready and not reload_all:
                continue
            entry = ModelVersion(
                record.name, number, definition.versions[number], config, fingerprint
            )
            if current is None or not current.ready:
                record.versions[number] = entry
            self._set_state(entry, ModelState.LOADING, publish=current is None or not current.ready)
            pending.append(entry)

        for entry in pending:
            await asyncio.to_thread(self._load_version, entry)
            self._publish(record, entry)

        healthy = bool(chosen) and all(record.versions[n].ready for n in chosen)
        for number in [n for n in record.versions if n not in chosen]:
            entry = record.versions[number]
            if entry.ready and not healthy:
                log.warning(
                    "model %s keeps serving version %d: the versions that replace it are not "
                    "all ready",
                    record.name,
                    number,
                )
                continue
            del record.versions[number]
            await self._retire(entry, wait=False)
        if not chosen:
            log.error("model %s has no version to serve", record.name)
            return [record.error]
        return [f"version {e.version}: {e.reason}" for e in pending if not e.ready]

    def _publish(self, record: ModelRecord, entry: ModelVersion) -> None:
        """Put a freshly loaded version in place; a failed reload leaves the old one serving."""
        current = record.versions.get(entry.version)
        if current is entry or current is None:
            record.versions[entry.version] = entry
            self._set_state(entry, entry.state)
            return
        if entry.ready:
            record.versions[entry.version] = entry
            current.state = ModelState.UNAVAILABLE  # silently: the new one owns the state gauge
            self._retiring_task(current)
            self._set_state(entry, ModelState.READY)
        else:
            current.reason = f"reloading failed, the previous load keeps serving: {entry.reason}"

    def _load_version(self, entry: ModelVersion) -> None:
        if entry.config.pipeline:
            self._load_pipeline(entry)
            return
        host = None
        try:
            runtime = self._runtimes.runtime_for(entry.path, entry.config)
            model_file = runtime.find_model_file(entry.path, entry.config)
            if model_file is not None and not self._source.contains(model_file):
                raise ModelLoadError(f"{model_file.name} links outside the model repository")
            label = f"{entry.name}-{entry.version}"
            host = self._runtimes.host(runtime, entry.path, entry.config, label)
            signature = apply_batching(
                resolve_signature(host.signature(), entry.config), entry.config
            )
        except Exception as exc:  # a runtime's own error too: report it, keep serving the rest
            if host is not None:
                host.close()
            reason = exc.message if isinstance(exc, ModelportError) else _describe(exc)
            self._fail(entry, reason)
            return
        entry.platform = runtime.platform
        entry.triton_platform = runtime.triton_platform
        entry.host = host
        self._ready(entry, signature)
        entry.batcher = build_scheduler(entry, host, signature)
        log.info(
            "model %s version %d is READY (%s, %d %s instance(s))",
            entry.name,
            entry.version,
            runtime.platform,
            entry.config.instance_count,
            host.kind,
        )

    def _load_pipeline(self, entry: ModelVersion) -> None:
        try:  # declaring nothing: the tensors are the ones config.yaml lists
            signature = resolve_signature(Signature((), ()), entry.config)
        except ModelportError as exc:
            self._fail(entry, exc.message)
            return
        entry.platform = "pipeline"
        entry.triton_platform = "ensemble"
        entry.pipeline = Pipeline(entry.name, entry.config)
        self._ready(entry, signature)
        steps = " -> ".join(step.model for step in entry.config.pipeline)
        log.info("model %s version %d is READY (pipeline: %s)", entry.name, entry.version, steps)

    def _ready(self, entry: ModelVersion, signature: ServingSignature) -> None:
        entry.signature = signature
        entry.guard = InputGuard(
            signature.inputs, signature.outputs, signature.max_batch_size, self._limits
        )
        entry.recorder = self._observer.recorder(entry.name, entry.version_str)
        entry.state = ModelState.READY

    def _fail(self, entry: ModelVersion, reason: str) -> None:
        entry.reason = reason
        entry.state = ModelState.FAILED
        log.error("model %s version %d failed to load: %s", entry.name, entry.version, reason)

    def _set_state(self, entry: ModelVersion, state: ModelState, *, publish: bool = True) -> None:
        entry.state = state
        if publish:
            self._observer.model_state(entry.name, entry.version_str, state.value)

    async def _retire(self, entry: ModelVersion, *, wait: bool = True) -> None:
        was_serving = entry.serving
        self._set_state(entry, ModelState.UNAVAILABLE)
        if not was_serving:
            return
        task = self._retiring_task(entry)
        if wait:
            await task

    def _retiring_task(self, entry: ModelVersion) -> asyncio.Task[None]:
        task = asyncio.create_task(self._drain_and_close(entry))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return task

    async def _drain_and_close(self, entry: ModelVersion) -> None:
        await entry.drained()
        await entry.close()
        log.info("model %s version %d unloaded", entry.name, entry.version)

    # ---- finding what serves --------------------------------------------------------------

    def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        """The version a request should run on; raises if it is unknown or not ready.

        `version` is a version number, a label from the model's config, or empty: then the
        traffic split decides, or without one the version labelled stable, or the newest.
        """
        record = self._records.get(name)
        if record is None:
            raise ModelNotFound(f"unknown model '{name}'")
        if version in (None, ""):
            return self._route(record)
        number = _version_number(record, version)
        entry = record.versions.get(number)
        if entry is None:
            raise ModelNotFound(f"unknown version '{version}' of model '{name}'")
        if not entry.ready:
            detail = f": {entry.reason}" if entry.reason else ""
            raise ModelNotReady(f"model '{name}' version {version} is {entry.state.value}{detail}")
        return entry

    def _route(self, record: ModelRecord) -> ModelVersion:
        ready = record.ready_versions()
        if not ready:
            reason = f" ({record.error})" if record.error else _reasons(record.versions.values())
            raise ModelNotReady(f"model '{record.name}' has no ready version{reason}")
        config = record.config or _NO_CONFIG
        weighted = [(v, config.traffic[v.version]) for v in ready if config.traffic.get(v.version)]
        if weighted:
            versions, weights = zip(*weighted, strict=True)
            return self._rng.choices(versions, weights)[0]
        stable = record.versions.get(config.labels.get(STABLE, 0))
        if stable is not None and stable.ready:
            return stable
        return max(ready, key=lambda v: v.version)

    def find(self, name: str, version: str | None = None) -> ModelVersion | None:
        """Like resolve, but returns None instead of raising when nothing is ready."""
        try:
            return self.resolve(name, version)
        except ModelportError:
            return None

    def versions(self, name: str) -> list[ModelVersion]:
        record = self._records.get(name)
        if record is None:
            raise ModelNotFound(f"unknown model '{name}'")
        return sorted(record.versions.values(), key=lambda v: v.version)

    def all_versions(self) -> Iterable[ModelVersion]:
        for record in list(self._records.values()):
            yield from list(record.versions.values())

    async def index(self) -> list[dict[str, Any]]:
        """One row per model version (and one per model with none, loaded or not), in Triton's
        shape, plus the labels and traffic share of each version."""
        on_disk = await asyncio.to_thread(self._source.model_names)
        rows: list[dict[str, Any]] = []
        for name in sorted(set(self._records) | set(on_disk)):
            record = self._records.get(name)
            if record is None:
                rows.append({"name": name, "state": "UNAVAILABLE", "reason": "not loaded"})
                continue
            if not record.versions:
                rows.append({"name": name, "state": "UNAVAILABLE", "reason": record.error})
            config = record.config or _NO_CONFIG
            for entry in sorted(record.versions.values(), key=lambda v: v.version):
                row = {
                    "name": name,
                    "version": entry.version_str,
                    "state": entry.state.value,
                    "reason": entry.reason,
                }
                rows.append(row | config.routing(entry.version))
        return rows

    def failed(self) -> list[str]:
        names = [
            f"{v.name}/{v.version}" for v in self.all_versions() if v.state is ModelState.FAILED
        ]
        return names + [n for n, r in self._records.items() if r.error and r.error != "unloaded"]

    async def close(self) -> None:
        for entry in list(self.all_versions()):
            entry.state = ModelState.UNAVAILABLE
            await entry.close()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


def served_versions(config: ModelConfig, available: list[int]) -> list[int]:
    """The versions to serve: what the version policy selects, plus every version on disk that
    a label or the traffic split names (a canary serves next to stable whatever the policy)."""
    named = set(config.labels.values()) | set(config.traffic)
    chosen = set(config.version_policy.select(available)) | (named & set(available))
    return sorted(chosen)


def _serving(config: ModelConfig) -> ModelConfig:
    """The part of a config that a loaded version depends on (not routing, not the policy)."""
    return config.model_copy(update={"labels": {}, "traffic": {}, "version_policy": None})


def _version_number(record: ModelRecord, version: str) -> int:
    if _VERSION.fullmatch(version):
        return int(version)
    labels = (record.config or _NO_CONFIG).labels
    if version in labels:
        return labels[version]
    raise ModelNotFound(
        f"unknown version '{version}' of model '{record.name}' (versions are positive integers; "
        f"labels: {', '.join(sorted(labels)) or 'none'})"
    )


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


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
