"""A third-party runtime as a registry would be given one: importable by module and name, so a
worker process can create it. It holds the GIL, so by default its instances are processes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from modelport.core.config import ModelConfig
from modelport.core.runtime import Capabilities, Signature
from modelport.core.types import DataType, TensorSpec

SIGNATURE = Signature(
    (TensorSpec("X", DataType.FP32, (-1,)),),
    (TensorSpec("Y", DataType.FP32, (-1,)), TensorSpec("PID", DataType.INT64, (1,))),
)


class DoublingModel:
    def signature(self) -> Signature:
        return SIGNATURE

    def infer(
        self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None
    ) -> dict[str, np.ndarray]:
        """Y = 2 X, and PID: the process that ran it."""
        return {"Y": inputs["X"] * 2, "PID": np.array([os.getpid()], np.int64)}

    def close(self) -> None:
        pass


class DoublingRuntime:
    platform = "doubling"
    triton_platform = "doubling"
    capabilities = Capabilities(thread_safe=False, releases_gil=False)

    def find_model_file(self, version_dir: Path, config: ModelConfig) -> Path | None:
        return None

    def load(self, version_dir: Path, config: ModelConfig) -> DoublingModel:
        return DoublingModel()


class ThreadedDoublingRuntime(DoublingRuntime):
    """The same model from a runtime that releases the GIL: threads unless config.yaml says."""

    capabilities = Capabilities(thread_safe=True, releases_gil=True)


def make_doubling() -> DoublingRuntime:
    return DoublingRuntime()
