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
from typing import Protocol

from modelport.core.admission import Admission, LimitRecorder
from modelport.core.config import ModelConfig
from modelport.core.errors import (
    InvalidInput,
    LoadFailed,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    ModelportError,
)
from modelport.core.limits import RateLimit
from modelport.core.pipeline import Pipeline
from modelport.core.runtime import ModelHost, Runtime, Signature
from modelport.core.signature import ServingSignature, resolve_signature
from modelport.core.validate import InputGuard, Limits
from modelport.core.versions import (
    Batched,
    Failed,
    Loaded,
    Loading,
    ModelHandle,
    ModelState,
    ModelVersion,
    Planned,
    Ready,
    Unloaded,
    VersionRecorder,
    apply_batching,
    build_scheduler,
)
from modelport.core.views import IndexRow

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

    def parse_config(self, text: str, name: str) -> ModelConfig:
        """A config given as text (a load request's), in the source's formats; ValueError
        names the problem."""
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

    def limit_recorder(self, model: str) -> LimitRecorder: ...

    def model_state(self, model: str, version: str, state: str) -> None: ...


@dataclass(slots=True)
class ModelRecord:
    """One model: the versions that serve or are failing, and how requests pick among them."""

    name: str
    config: ModelConfig | None = None
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    error: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    admission: Admission = field(default_factory=Admission)
    """The model's rate_limit and max_in_flight, shared by its versions."""


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
        self._closing = False

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

    async def load(self, name: str, config_text: str | None = None) -> None:
        """Load or reload a model (the model control API), optionally with a config given as
        text; raises if a version failed."""
        config = None
        if config_text is not None:
            try:  # in a thread: a large config takes PyYAML seconds, which the loop must not
                config = await asyncio.to_thread(self._source.parse_config, config_text, name)
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
        failures = await self.sync(name, config)
        if failures:
            raise LoadFailed(f"model '{name}' failed to load: {'; '.join(failures)}")

    async def sync(self, name: str, config: ModelConfig | None = None) -> list[str]:
        """Bring what serves in line with the repository: load new and changed versions, retire
        versions the policy no longer selects. Returns the failures (empty when all is well)."""
        while True:
            record = self._records.get(name)
            if record is None:
                admission = Admission(self._observer.limit_recorder(name))
                record = self._records[name] = ModelRecord(name, admission=admission)
            async with record.lock:
                if self._records.get(name) is not record:
                    continue  # removed while this sync waited for the lock: start afresh
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
            await self._unload(record)

    async def remove(self, name: str) -> None:
        """The model left the repository: unload it and forget it (under its lock, so a sync
        waiting for the lock starts on a fresh record instead of one nobody can reach)."""
        record = self._records.get(name)
        if record is None:
            return
        async with record.lock:
            await self._unload(record)
            if self._records.get(name) is record:
                del self._records[name]

    async def _unload(self, record: ModelRecord) -> None:
        retired = list(record.versions.values())
        record.versions.clear()
        record.config = None
        record.error = "unloaded"
        await asyncio.gather(*(self._retire(version) for version in retired))
        log.info("model %s unloaded", record.name)

    async def _sync(self, record: ModelRecord, definition: ModelDefinition) -> list[str]:
        if definition.error:
            record.error = definition.error
            log.error("model %s cannot be loaded: %s", record.name, definition.error)
            return [definition.error]
        config = definition.config
        chosen = served_versions(config, list(definition.versions))
        record.error = "" if chosen else "no version directory matches the version policy"
        record.config = config
        record.admission.configure(record.name, _rate_limit(config), config.max_in_flight)

        pending: list[ModelVersion] = []
        for number in chosen:
            current = record.versions.get(number)
            fingerprint = definition.fingerprints.get(number, "")
            # a version reloads when its files or the config it was loaded with changed (not for
            # labels, traffic or the policy): compared per version, so a failed reload is tried
            # again by the next sync even though the record already has the new config
            unchanged = (
                current is not None
                and current.fingerprint == fingerprint
                and _serving(current.config) == _serving(config)
            )
            if unchanged and current is not None and current.ready:
                continue
            version = ModelVersion(
                record.name,
                number,
                definition.versions[number],
                config,
                fingerprint,
                admission=record.admission,
            )
            visible = current is None or not current.ready
            if visible:  # else the old load serves on, and owns the state gauge, until replaced
                record.versions[number] = version
            self._announce(version, ModelState.LOADING, visible)
            pending.append(version)

        for version in pending:
            await asyncio.to_thread(self._load_version, version)
            self._install(record, version)

        healthy = bool(chosen) and all(record.versions[n].ready for n in chosen)
        for number in [n for n in record.versions if n not in chosen]:
            version = record.versions[number]
            if version.ready and not healthy:
                log.warning(
                    "model %s keeps serving version %d: the versions that replace it are not "
                    "all ready",
                    record.name,
                    number,
                )
                continue
            del record.versions[number]
            await self._retire(version, wait=False)
        if not chosen:
            log.error("model %s has no version to serve", record.name)
            return [record.error]
        return [f"version {v.number}: {v.reason}" for v in pending if not v.ready]

    def _install(self, record: ModelRecord, version: ModelVersion) -> None:
        """Put a freshly loaded version in place; a failed reload leaves the old one serving."""
        current = record.versions.get(version.number)
        if current is version or current is None:
            record.versions[version.number] = version
            self._announce(version, version.state)
            return
        if version.ready:
            record.versions[version.number] = version
            self._retiring_task(current)  # silently: the new load owns the state gauge
            self._announce(version, ModelState.READY)
            return
        phase = current.phase
        if isinstance(phase, Ready):
            note = f"reloading failed, the previous load keeps serving: {version.reason}"
            current.phase = Ready(phase.handle, note)

    def _load_version(self, version: ModelVersion) -> None:
        """Load one version (in a worker thread); it ends Ready or Failed."""
        if version.config.pipeline:
            self._load_pipeline(version)
            return
        host = None
        try:
            runtime = self._runtimes.runtime_for(version.path, version.config)
            model_file = runtime.find_model_file(version.path, version.config)
            if model_file is not None and not self._source.contains(model_file):
                raise ModelLoadError(f"{model_file.name} links outside the model repository")
            label = f"{version.name}-{version.number}"
            host = self._runtimes.host(runtime, version.path, version.config, label)
            signature = apply_batching(
                resolve_signature(host.signature(), version.config), version.config
            )
        except Exception as exc:  # a runtime's own error too: report it, keep serving the rest
            if host is not None:
                host.close()
            self._fail(version, exc.message if isinstance(exc, ModelportError) else _describe(exc))
            return
        recorder = self._observer.recorder(version.name, version.label)
        batcher = build_scheduler(version, host, signature, recorder)
        loaded = Loaded(
            runtime.platform,
            runtime.triton_platform,
            signature,
            self._guard(signature),
            recorder,
            Batched(host, batcher),
        )
        if not self._ready(version, loaded):
            host.close()  # no request ever reached it: the batcher has nothing to stop
            log.info(
                "model %s version %d was retired while it loaded", version.name, version.number
            )
            return
        log.info(
            "model %s version %d is READY (%s, %d %s instance(s))",
            version.name,
            version.number,
            runtime.platform,
            version.config.instance_count,
            host.kind,
        )

    def _load_pipeline(self, version: ModelVersion) -> None:
        try:  # declaring nothing: the tensors are the ones config.yaml lists
            signature = resolve_signature(Signature((), ()), version.config)
        except ModelportError as exc:
            self._fail(version, exc.message)
            return
        recorder = self._observer.recorder(version.name, version.label)
        pipeline = Pipeline(version.name, version.config)
        loaded = Loaded(
            "pipeline", "ensemble", signature, self._guard(signature), recorder, Planned(pipeline)
        )
        self._ready(version, loaded)
        steps = " -> ".join(step.model for step in version.config.pipeline)
        log.info("model %s version %d is READY (pipeline: %s)", version.name, version.number, steps)

    def _guard(self, signature: ServingSignature) -> InputGuard:
        return InputGuard(
            signature.inputs, signature.outputs, signature.max_batch_size, self._limits
        )

    def _ready(self, version: ModelVersion, loaded: Loaded) -> bool:
        """Make a loaded version READY, unless it was retired (or the manager closed) while it
        loaded: then it is never served, and the caller closes what it loaded."""
        if self._closing or not isinstance(version.phase, Loading):
            version.phase = Unloaded()
            return False
        version.phase = Ready(ModelHandle(version, loaded))
        return True

    def _fail(self, version: ModelVersion, reason: str) -> None:
        version.phase = Failed(reason)
        log.error("model %s version %d failed to load: %s", version.name, version.number, reason)

    def _announce(self, version: ModelVersion, state: ModelState, visible: bool = True) -> None:
        """Tell the observer the state a version is in (unless an older load of the same version
        still serves and owns the gauge)."""
        if visible:
            self._observer.model_state(version.name, version.label, state.value)

    async def _retire(self, version: ModelVersion, *, wait: bool = True) -> None:
        loaded = version.retire()
        self._announce(version, ModelState.UNAVAILABLE)
        if loaded is None:
            return
        task = self._retiring_task(version)
        if wait:
            await task

    def _retiring_task(self, version: ModelVersion) -> asyncio.Task[None]:
        version.retire()
        task = asyncio.create_task(self._drain_and_close(version))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return task

    async def _drain_and_close(self, version: ModelVersion) -> None:
        await version.drained()
        await version.close()
        log.info("model %s version %d unloaded", version.name, version.number)

    # ---- finding what serves --------------------------------------------------------------

    def resolve(self, name: str, version: str | None = None) -> ModelHandle:
        """The version a request should run on; raises if it is unknown or not ready.

        `version` is a version number, a label from the model's config, or empty: then the
        traffic split decides, or without one the version labelled stable, or the newest.
        """
        record = self._records.get(name)
        if record is None:
            raise ModelNotFound(f"unknown model '{name}'")
        if version is None or version == "":
            return self._route(record)
        number = _version_number(record, version)
        found = record.versions.get(number)
        if found is None:
            raise ModelNotFound(f"unknown version '{version}' of model '{name}'")
        phase = found.phase
        if not isinstance(phase, Ready):
            detail = f": {found.reason}" if found.reason else ""
            raise ModelNotReady(f"model '{name}' version {version} is {found.state.value}{detail}")
        return phase.handle

    def _route(self, record: ModelRecord) -> ModelHandle:
        """Per request, so it allocates nothing on the common path (no split: the stable
        label, else the newest ready version)."""
        config = record.config or _NO_CONFIG
        if config.traffic:
            weighted = [
                (phase.handle, config.traffic[number])
                for number, version in record.versions.items()
                if config.traffic.get(number) and isinstance(phase := version.phase, Ready)
            ]
            if weighted:
                handles, weights = zip(*weighted, strict=True)
                chosen: ModelHandle = self._rng.choices(handles, weights)[0]
                return chosen
        stable = record.versions.get(config.labels.get(STABLE, 0))
        if stable is not None and isinstance(stable.phase, Ready):
            return stable.phase.handle
        newest: ModelHandle | None = None
        newest_number = 0
        for number, version in record.versions.items():
            if number > newest_number and isinstance(version.phase, Ready):
                newest, newest_number = version.phase.handle, number
        if newest is None:
            reason = f" ({record.error})" if record.error else _reasons(record.versions.values())
            raise ModelNotReady(f"model '{record.name}' has no ready version{reason}")
        return newest

    def find(self, name: str, version: str | None = None) -> ModelHandle | None:
        """Like resolve, but returns None instead of raising when nothing is ready."""
        try:
            return self.resolve(name, version)
        except ModelportError:
            return None

    def versions(self, name: str) -> list[ModelVersion]:
        record = self._records.get(name)
        if record is None:
            raise ModelNotFound(f"unknown model '{name}'")
        return sorted(record.versions.values(), key=lambda v: v.number)

    def configs(self) -> list[tuple[str, ModelConfig, list[int]]]:
        """Each model with a config: its name, the config it serves with and its READY
        versions' numbers (what the SLO evaluator looks at)."""
        return [
            (name, record.config, sorted(n for n, v in record.versions.items() if v.ready))
            for name, record in list(self._records.items())
            if record.config is not None
        ]

    def all_versions(self) -> Iterable[ModelVersion]:
        for record in list(self._records.values()):
            yield from list(record.versions.values())

    async def index(self) -> list[IndexRow]:
        """One row per model version (and one per model with none, loaded or not), in Triton's
        shape, plus the labels and traffic share of each version."""
        on_disk = await asyncio.to_thread(self._source.model_names)
        rows: list[IndexRow] = []
        for name in sorted(set(self._records) | set(on_disk)):
            record = self._records.get(name)
            if record is None:
                rows.append({"name": name, "state": "UNAVAILABLE", "reason": "not loaded"})
                continue
            if not record.versions:
                rows.append({"name": name, "state": "UNAVAILABLE", "reason": record.error})
            config = record.config or _NO_CONFIG
            for version in sorted(record.versions.values(), key=lambda v: v.number):
                row: IndexRow = {
                    "name": name,
                    "version": version.label,
                    "state": version.state.value,
                    "reason": version.reason,
                }
                labels = config.labels_of(version.number)
                if labels:
                    row["labels"] = labels
                if version.number in config.traffic:
                    row["traffic"] = config.traffic[version.number]
                rows.append(row)
        return rows

    def failed(self) -> list[str]:
        names = [
            f"{v.name}/{v.number}" for v in self.all_versions() if v.state is ModelState.FAILED
        ]
        return names + [n for n, r in self._records.items() if r.error and r.error != "unloaded"]

    async def close(self) -> None:
        """Close every version; one still loading closes itself when its load returns."""
        self._closing = True
        for version in list(self.all_versions()):
            version.retire()
            await version.close()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


def served_versions(config: ModelConfig, available: list[int]) -> list[int]:
    """The versions to serve: what the version policy selects, plus every version on disk that
    a label or the traffic split names (a canary serves next to stable whatever the policy)."""
    named = set(config.labels.values()) | set(config.traffic)
    chosen = set(config.version_policy.select(available)) | (named & set(available))
    return sorted(chosen)


def _serving(config: ModelConfig) -> ModelConfig:
    """The part of a config that a loaded version depends on (not routing, not the policy, not
    the model's limits or SLO: those apply to the versions serving already)."""
    return config.model_copy(
        update={
            "labels": {},
            "traffic": {},
            "version_policy": None,
            "rate_limit": None,
            "max_in_flight": None,
            "slo": None,
        }
    )


def _rate_limit(config: ModelConfig) -> RateLimit | None:
    return None if config.rate_limit is None else config.rate_limit.limit()


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
    failed = [f"version {v.number}: {v.reason}" for v in versions if v.reason]
    return f" ({'; '.join(failed)})" if failed else ""


__all__ = [
    "InferenceObserver",
    "ModelDefinition",
    "ModelManager",
    "ModelSource",
    "RuntimeResolver",
]
