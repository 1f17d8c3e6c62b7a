"""InferenceServer: the one entry point frontends call. Resolve, validate, run, record."""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import numpy as np

from modelport.__about__ import __version__
from modelport.core.config import ModelConfig
from modelport.core.errors import InferenceFailed, ModelportError, NotAllowed
from modelport.core.manager import ModelManager, ModelVersion
from modelport.core.types import InferRequest, InferResponse

log = logging.getLogger("modelport.server")

SERVER_NAME = "modelport"

ModelControl = Literal["none", "poll", "explicit"]
"""Triton's model control modes: load everything once (none), follow the repository (poll), or
load and unload only when asked through the API (explicit)."""


class InferenceServer:
    def __init__(
        self,
        manager: ModelManager,
        *,
        extensions: tuple[str, ...] = (),
        strict_readiness: bool = False,
        model_control: ModelControl = "none",
        startup_models: tuple[str, ...] = ("*",),
    ) -> None:
        self.manager = manager
        self._extensions = extensions
        self._strict_readiness = strict_readiness
        self._model_control = model_control
        self._startup_models = startup_models
        self._started = False

    async def start(self) -> None:
        names = None if "*" in self._startup_models else self._startup_models
        await self.manager.load_all(names)
        self._started = True
        failed = self.manager.failed()
        if failed:
            log.warning("serving without %d model(s) that failed: %s", len(failed), failed)

    async def close(self) -> None:
        self._started = False
        await self.manager.close()

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready once the initial load has finished (and, if strict, nothing failed)."""
        if not self._started:
            return False
        return not (self._strict_readiness and self.manager.failed())

    def metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(self._extensions)}

    async def load_model(self, name: str, config: ModelConfig | None = None) -> None:
        """The model control API: load or reload a model, optionally with another config."""
        self._check_control("load")
        await self.manager.load(name, config)

    async def unload_model(self, name: str) -> None:
        self._check_control("unload")
        await self.manager.unload(name)

    def _check_control(self, action: str) -> None:
        if self._model_control != "explicit":
            raise NotAllowed(
                f"cannot {action} models while the model control mode is "
                f"'{self._model_control}'; start the server with --model-control-mode explicit"
            )

    def model(self, name: str, version: str | None = None) -> ModelVersion:
        return self.manager.resolve(name, version)

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        entry = self.manager.resolve(name, version)
        assert entry.signature is not None
        versions = [v.version_str for v in self.manager.versions(name) if v.ready]
        return {
            "name": name,
            "versions": [entry.version_str] if version else versions,
            "platform": entry.triton_platform,
            "inputs": [spec.as_dict() for spec in entry.signature.inputs],
            "outputs": [spec.as_dict() for spec in entry.signature.outputs],
        }

    async def infer(
        self, request: InferRequest, entry: ModelVersion | None = None
    ) -> InferResponse:
        """Run one request.

        A frontend that resolved `entry` and decoded the request through its InputGuard passes
        it: the lookup and the checks are then not repeated. Other callers pass only the request.
        """
        start = time.perf_counter_ns()
        validated = entry is not None and entry.ready
        if not validated:  # no entry given, or it was retired since the frontend looked it up
            entry = self.manager.resolve(request.model_name, request.model_version)
        assert entry is not None
        guard, batcher, recorder = entry.guard, entry.batcher, entry.recorder
        assert guard is not None and recorder is not None
        entry.enter()
        recorder.in_flight(1)
        try:
            if not validated:
                guard.check_arrays(request.inputs)
                if request.outputs is not None:
                    guard.check_outputs(request.outputs)
            if entry.pipeline is not None:
                outputs = await entry.pipeline.run(
                    request.inputs, request.outputs, self.infer, request.timeout
                )
                queue_ns, infer_ns = 0, time.perf_counter_ns() - start
            else:
                assert batcher is not None
                result = await batcher.submit(request.inputs, request.outputs, request.timeout)
                outputs = _select(entry, result.outputs, request.outputs)
                queue_ns, infer_ns = result.queue_ns, result.infer_ns
        except ModelportError as exc:
            self.record_rejected(entry, exc, start)
            raise
        finally:
            recorder.in_flight(-1)
            entry.leave()
        elapsed = time.perf_counter_ns() - start
        batch = _inference_count(entry, request.inputs)
        entry.stats.record_success(
            now_ms=time.time_ns() // 1_000_000,
            batch_size=batch,
            total_ns=elapsed,
            queue_ns=queue_ns,
            infer_ns=infer_ns,
        )
        recorder.success(elapsed / 1e9, infer_ns / 1e9, queue_ns / 1e9, batch)
        return InferResponse(
            model_name=entry.name,
            model_version=entry.version_str,
            outputs=outputs,
            id=request.id,
        )

    def record_rejected(self, entry: ModelVersion, error: ModelportError, started_ns: int) -> None:
        """Count a request a frontend refused before it reached infer() (bad body, too large)."""
        elapsed = time.perf_counter_ns() - started_ns
        entry.stats.record_failure(now_ms=time.time_ns() // 1_000_000, total_ns=elapsed)
        if entry.recorder is not None:
            entry.recorder.failure(elapsed / 1e9, error.kind.value)

    def statistics(
        self, name: str | None = None, version: str | None = None
    ) -> list[dict[str, Any]]:
        if name is None:
            entries = [v for v in self.manager.all_versions() if v.ready]
        elif version:
            entries = [self.manager.resolve(name, version)]
        else:
            entries = [v for v in self.manager.versions(name) if v.ready]
        return [entry.stats.as_triton(entry.name, entry.version_str) for entry in entries]


def _select(
    entry: ModelVersion, outputs: dict[str, np.ndarray], wanted: tuple[str, ...] | None
) -> dict[str, np.ndarray]:
    """The outputs this request asked for, in its order (a shared batch may have run more)."""
    if wanted is None:
        return outputs
    missing = [name for name in wanted if name not in outputs]
    if missing:
        raise InferenceFailed(f"model '{entry.name}' did not return requested output(s) {missing}")
    return {name: outputs[name] for name in wanted}


def _inference_count(entry: ModelVersion, inputs: dict[str, np.ndarray]) -> int:
    """Rows of a batched model's request (inputs agree on it); 1 for a model without batching."""
    assert entry.signature is not None
    if entry.signature.max_batch_size == 0:
        return 1
    return int(next(iter(inputs.values())).shape[0])
