"""The backend contract: a Runtime loads one model version into a LoadedModel that runs batches,
and a ModelHost runs those batches off the event loop (threads or worker processes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from modelport.core.config import ModelConfig
from modelport.core.types import TensorSpec


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the core needs to know to run a model well.

    thread_safe: one loaded model may run several batches at once from different threads.
    releases_gil: inference spends its time outside the GIL, so a thread pool gives parallelism;
    when False the executor should move the work to another process.
    """

    thread_safe: bool
    releases_gil: bool


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@runtime_checkable
class LoadedModel(Protocol):
    def signature(self) -> Signature:
        """Inputs and outputs as the model file declares them (before the config's overrides)."""
        ...

    def infer(
        self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None
    ) -> dict[str, np.ndarray]:
        """Run one batch. BYTES tensors are object arrays of `bytes` both ways."""
        ...

    def close(self) -> None: ...


class Runtime(Protocol):
    platform: str
    """The name config.yaml uses in `platform:`."""

    triton_platform: str
    """The platform name Triton reports in its model configuration (read by perf_analyzer)."""

    capabilities: Capabilities

    def find_model_file(self, version_dir: Path, config: ModelConfig) -> Path | None:
        """The file (or directory) in version_dir this runtime would load, if there is one."""
        ...

    def load(self, version_dir: Path, config: ModelConfig) -> LoadedModel: ...


Arrays = dict[str, np.ndarray]


class ModelHost(Protocol):
    """A loaded version's instances and where they run; the batcher hands it whole batches."""

    kind: str
    """'thread' or 'process': how the batches of this version run."""

    def signature(self) -> Signature: ...

    async def run(self, inputs: Arrays, outputs: tuple[str, ...] | None) -> tuple[Arrays, int]:
        """Run one batch on a free instance; returns the outputs and the compute time in ns."""
        ...

    def close(self) -> None:
        """Stop the instances (blocking: called from a worker thread)."""
        ...
