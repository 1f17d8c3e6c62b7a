"""DataPlane: the one API every frontend calls. Resolve, validate, run, record.

A frontend resolves a model to a `ModelHandle`, decodes the request through the handle's guard
(the only maker of a `ValidatedRequest`) and hands both to `infer`; metadata, readiness, the
repository index and statistics come back as typed values (core/views.py). Counting a request
that was refused, before or after it reached the model, happens here and nowhere else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import numpy as np

from modelport.__about__ import __version__
from modelport.core.admission import Admission
from modelport.core.errors import (
    InferenceFailed,
    ModelportError,
    NotAllowed,
    RateLimited,
    public_error,
)
from modelport.core.manager import ModelManager
from modelport.core.stats import ModelStatistics
from modelport.core.tracing import CURRENT_TRACE, RequestTrace, Tracer
from modelport.core.types import InferRequest, InferResponse
from modelport.core.validate import InputGuard, ValidatedRequest
from modelport.core.versions import Batched, ModelHandle, ModelState
from modelport.core.views import (
    IndexRow,
    ModelMetadata,
    ServerMetadata,
    VersionStatus,
)

log = logging.getLogger("modelport.server")

SERVER_NAME = "modelport"

ModelControl = Literal["none", "poll", "explicit"]
"""Triton's model control modes: load everything once (none), follow the repository (poll), or
load and unload only when asked through the API (explicit)."""

Decode = Callable[[InputGuard], ValidatedRequest | Awaitable[ValidatedRequest]]
"""Turns a frontend's request into a ValidatedRequest with the guard it is given (inline, or
awaitable when the frontend decodes a large body in a thread)."""


class DataPlane:
    def __init__(
        self,
        manager: ModelManager,
        *,
        extensions: tuple[str, ...] = (),
        strict_readiness: bool = False,
        model_control: ModelControl = "none",
        startup_models: tuple[str, ...] = ("*",),
        tracer: Tracer | None = None,
    ) -> None:
        """`tracer`: traces sampled requests (None: tracing is off, and costs nothing)."""
        self._manager = manager
        self.tracer = tracer
        """What frontends start their requests' traces with (core/tracing.py)."""
        self._extensions = extensions
        self._strict_readiness = strict_readiness
        self._model_control = model_control
        self._startup_models = startup_models
        self._started = False
        self._status_sources: list[Callable[[], list[IndexRow]]] = []
        self._index_notes: list[Callable[[], dict[tuple[str, str], str]]] = []

    # ---- the server ------------------------------------------------------------------------

    async def start(self) -> None:
        names = None if "*" in self._startup_models else self._startup_models
        await self._manager.load_all(names)
        self._started = True
        failed = self._manager.failed()
        if failed:
            log.warning("serving without %d model(s) that failed: %s", len(failed), failed)

    async def close(self) -> None:
        self._started = False
        await self._manager.close()

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready once the initial load has finished (and, if strict, nothing failed)."""
        if not self._started:
            return False
        return not (self._strict_readiness and self._manager.failed())

    def metadata(self) -> ServerMetadata:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(self._extensions)}

    # ---- models ----------------------------------------------------------------------------

    def resolve(self, name: str, version: str | None = None) -> ModelHandle:
        """The version a request for (name, version) runs on; raises ModelNotFound or
        ModelNotReady. `version` is a number, a label, or None for the routing policy."""
        return self._manager.resolve(name, version)

    def is_ready(self, name: str, version: str | None = None) -> bool:
        return self._manager.find(name, version) is not None

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        handle = self._manager.resolve(name, version)
        if version:
            versions = [handle.version]
        else:
            versions = [v.label for v in self._manager.versions(name) if v.ready]
        return {
            "name": name,
            "versions": versions,
            "platform": handle.triton_platform,
            "inputs": [spec.as_dict() for spec in handle.signature.inputs],
            "outputs": [spec.as_dict() for spec in handle.signature.outputs],
        }

    def version_statuses(self, name: str) -> list[VersionStatus]:
        """Every version of a model the server knows, ready or not, oldest first."""
        return [VersionStatus(v.label, v.state, v.reason) for v in self._manager.versions(name)]

    async def repository_index(self, *, ready_only: bool = False) -> list[IndexRow]:
        """The models' rows, then a row for each frontend that reports its own state (a queue's
        broker connection)."""
        rows = await self._manager.index()
        for notes in self._index_notes:
            _add_notes(rows, notes())
        if ready_only:  # asks for the models that can serve: frontends' rows are no models
            return [row for row in rows if row["state"] == "READY"]
        for source in self._status_sources:
            rows.extend(source())
        return rows

    def add_status_rows(self, source: Callable[[], list[IndexRow]]) -> None:
        self._status_sources.append(source)

    def add_index_notes(self, source: Callable[[], dict[tuple[str, str], str]]) -> None:
        """`source` gives notes by (model, version) for those versions' rows' reason (the
        SLO loop's rollbacks)."""
        self._index_notes.append(source)

    def statistics(
        self, name: str | None = None, version: str | None = None
    ) -> list[ModelStatistics]:
        if name is None:
            chosen = [v for v in self._manager.all_versions() if v.ready]
        elif version:
            chosen = [self._manager.resolve(name, version)._version]
        else:
            chosen = [v for v in self._manager.versions(name) if v.ready]
        return [v.stats.as_triton(v.name, v.label) for v in chosen]

    async def load_model(self, name: str, config_text: str | None = None) -> None:
        """The model control API: load or reload a model, optionally with another config given
        as YAML or JSON text."""
        self._check_control("load")
        await self._manager.load(name, config_text)

    async def unload_model(self, name: str) -> None:
        self._check_control("unload")
        await self._manager.unload(name)

    def _check_control(self, action: str) -> None:
        if self._model_control != "explicit":
            raise NotAllowed(
                f"cannot {action} models while the model control mode is "
                f"'{self._model_control}'; start the server with --model-control-mode explicit"
            )

    # ---- inference -------------------------------------------------------------------------

    async def infer(self, handle: ModelHandle, decode: Decode) -> InferResponse:
        """Admit a request under its model's limits, decode it with the handle's guard and run
        it; a refused request (over a limit, bad body, too large, queue full, timeout, a failing
        model) is counted against the version."""
        started = time.perf_counter_ns()
        trace = CURRENT_TRACE.get() if self.tracer is not None else None
        admission = self._admit(handle, started)
        try:
            try:
                decoded = decode(handle.guard)
                validated = decoded if isinstance(decoded, ValidatedRequest) else await decoded
            except Exception as exc:  # a frontend's own failure counts too, as internal
                self._reject(handle, public_error(exc), started)
                raise
            if trace is None:
                return await self._run(handle, validated, started, None)
            trace.decoded(started, time.perf_counter_ns())
            response = await self._run(handle, validated, started, trace)
            rows = _inference_count(handle, validated.request.inputs)
            ended = time.perf_counter_ns()
            trace.answered(response.model_name, response.model_version, rows, ended)
            return response
        finally:  # success, error, cancellation (a client gone, a gRPC deadline) alike
            admission.leave()

    async def infer_request(self, request: InferRequest) -> InferResponse:
        """Run a request whose arrays are decoded already (a pipeline step, say): resolved by
        its model name and version, admitted under its model's limits, then checked in full."""
        started = time.perf_counter_ns()
        handle = self._manager.resolve(request.model_name, request.model_version)
        admission = self._admit(handle, started)
        trace = CURRENT_TRACE.get() if self.tracer is not None else None
        try:
            validated = self._validate(handle, request, started)
            return await self._run(handle, validated, started, trace)
        finally:
            admission.leave()

    def _admit(self, handle: ModelHandle, started: int) -> Admission:
        """Enter the model's admission (rate_limit, max_in_flight) before any decoding work;
        the caller leaves the one returned, even if the handle is re-routed meanwhile."""
        admission = handle._admission
        try:
            admission.enter()
        except RateLimited as exc:
            self._reject(handle, exc, started)
            raise
        return admission

    def _validate(
        self, handle: ModelHandle, request: InferRequest, started: int
    ) -> ValidatedRequest:
        try:
            return handle.guard.validate(request)
        except ModelportError as exc:
            self._reject(handle, exc, started)
            raise

    async def _run(
        self,
        handle: ModelHandle,
        validated: ValidatedRequest,
        started: int,
        trace: RequestTrace | None,
    ) -> InferResponse:
        request = validated.request
        if not handle.serving:
            # retired (or replaced) since the frontend resolved it, e.g. while a large body was
            # decoded in a thread: route the same model again
            handle = self._manager.resolve(handle.name, request.model_version)
        if validated.guard is not handle.guard:  # checked by another version's guard: again
            validated = self._validate(handle, request, started)
        version, loaded = handle._version, handle._loaded
        recorder = loaded.recorder
        version.enter()  # no await since the serving check: a retired version waits for this
        recorder.in_flight(1)
        try:
            work = loaded.work
            if isinstance(work, Batched):
                run = None if trace is None else trace.run(handle.name, handle.version)
                result = await work.batcher.submit(
                    request.inputs, request.outputs, request.timeout, run
                )
                outputs = _select(handle, result.outputs, request.outputs)
                queue_ns, infer_ns = result.queue_ns, result.infer_ns
            else:
                outputs = await work.pipeline.run(
                    request.inputs, request.outputs, self.infer_request, request.timeout
                )
                queue_ns, infer_ns = 0, time.perf_counter_ns() - started
        except ModelportError as exc:
            self._reject(handle, exc, started)
            raise
        finally:
            recorder.in_flight(-1)
            version.leave()
        elapsed = time.perf_counter_ns() - started
        batch = _inference_count(handle, request.inputs)
        version.stats.record_success(
            now_ms=time.time_ns() // 1_000_000,
            batch_size=batch,
            total_ns=elapsed,
            queue_ns=queue_ns,
            infer_ns=infer_ns,
        )
        recorder.success(elapsed / 1e9, infer_ns / 1e9, queue_ns / 1e9, batch)
        return InferResponse(
            model_name=handle.name,
            model_version=handle.version,
            outputs=outputs,
            id=request.id,
        )

    def _reject(self, handle: ModelHandle, error: ModelportError, started_ns: int) -> None:
        elapsed = time.perf_counter_ns() - started_ns
        handle._version.stats.record_failure(now_ms=time.time_ns() // 1_000_000, total_ns=elapsed)
        handle._loaded.recorder.failure(elapsed / 1e9, error.kind.value)


def _add_notes(rows: list[IndexRow], notes: dict[tuple[str, str], str]) -> None:
    for row in rows if notes else ():
        note = notes.get((row["name"], row.get("version", "")))
        if note:
            row["reason"] = f"{row['reason']}; {note}" if row["reason"] else note


def _select(
    handle: ModelHandle, outputs: dict[str, np.ndarray], wanted: tuple[str, ...] | None
) -> dict[str, np.ndarray]:
    """The outputs this request asked for, in its order (a shared batch may have run more)."""
    if wanted is None:
        return outputs
    missing = [name for name in wanted if name not in outputs]
    if missing:
        raise InferenceFailed(f"model '{handle.name}' did not return requested output(s) {missing}")
    return {name: outputs[name] for name in wanted}


def _inference_count(handle: ModelHandle, inputs: dict[str, np.ndarray]) -> int:
    """Rows of a batched model's request (inputs agree on it); 1 for a model without batching."""
    if handle.signature.max_batch_size == 0:
        return 1
    return int(next(iter(inputs.values())).shape[0])


__all__ = [
    "DataPlane",
    "Decode",
    "IndexRow",
    "ModelControl",
    "ModelHandle",
    "ModelMetadata",
    "ModelState",
    "ServerMetadata",
    "ValidatedRequest",
    "VersionStatus",
]
