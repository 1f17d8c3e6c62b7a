"""ONNX Runtime backend: CPU by default; CUDA/TensorRT execution providers when present."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from modelport.core.config import ModelConfig, RuntimeOptions
from modelport.core.errors import ConfigError, ModelLoadError
from modelport.core.runtime import Capabilities, Signature
from modelport.core.types import DataType, TensorSpec
from modelport.runtimes.common import find_model_file, require_model_file, to_bytes, to_str

log = logging.getLogger("modelport.runtimes.onnx")

DEFAULT_FILENAME = "model.onnx"

ORT_TYPES: dict[str, DataType] = {
    "tensor(bool)": DataType.BOOL,
    "tensor(uint8)": DataType.UINT8,
    "tensor(uint16)": DataType.UINT16,
    "tensor(uint32)": DataType.UINT32,
    "tensor(uint64)": DataType.UINT64,
    "tensor(int8)": DataType.INT8,
    "tensor(int16)": DataType.INT16,
    "tensor(int32)": DataType.INT32,
    "tensor(int64)": DataType.INT64,
    "tensor(float16)": DataType.FP16,
    "tensor(float)": DataType.FP32,
    "tensor(double)": DataType.FP64,
    "tensor(string)": DataType.BYTES,
}

_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class OnnxRuntime:
    platform = "onnx"
    triton_platform = "onnxruntime_onnx"
    capabilities = Capabilities(thread_safe=True, releases_gil=True)

    def find_model_file(self, version_dir: Path, config: ModelConfig) -> Path | None:
        return find_model_file(version_dir, config, (DEFAULT_FILENAME,))

    def load(self, version_dir: Path, config: ModelConfig) -> OnnxModel:
        path = require_model_file(version_dir, config, (DEFAULT_FILENAME,))
        options = session_options(config.runtime)
        providers = choose_providers(config.runtime.execution_providers)
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:
            detail = " ".join(str(exc).split())
            raise ModelLoadError(f"onnxruntime could not load {path.name}: {detail}") from exc
        return OnnxModel(session)


def session_options(options: RuntimeOptions) -> ort.SessionOptions:
    session = ort.SessionOptions()
    # Load failures are reported through the model's FAILED state and our log; ORT's own
    # coloured stderr copy of the same error would only be noise.
    session.log_severity_level = 4
    session.graph_optimization_level = _OPTIMIZATION_LEVELS[options.graph_optimization_level]
    if options.intra_op_threads is not None:
        session.intra_op_num_threads = options.intra_op_threads
    if options.inter_op_threads is not None:
        session.inter_op_num_threads = options.inter_op_threads
        session.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    if options.allow_spinning is not None:
        flag = "1" if options.allow_spinning else "0"
        session.add_session_config_entry("session.intra_op.allow_spinning", flag)
        session.add_session_config_entry("session.inter_op.allow_spinning", flag)
    return session


def choose_providers(requested: tuple[str, ...]) -> list[str]:
    """The requested execution providers this build has, in order, always ending with CPU."""
    available = set(ort.get_available_providers())
    chosen = []
    for name in requested:
        provider = _PROVIDER_ALIASES.get(name.lower(), name)
        if provider not in available:
            log.warning("execution provider %s is not available here; skipping it", provider)
            continue
        if provider not in chosen:
            chosen.append(provider)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OnnxModel:
    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._inputs = tuple(_spec(arg) for arg in session.get_inputs())
        self._outputs = tuple(_spec(arg) for arg in session.get_outputs())
        self._string_inputs = {s.name for s in self._inputs if s.datatype is DataType.BYTES}

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def signature(self) -> Signature:
        return Signature(self._inputs, self._outputs)

    def infer(
        self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None
    ) -> dict[str, np.ndarray]:
        feed = inputs
        if self._string_inputs:
            feed = {
                name: to_str(name, array) if name in self._string_inputs else array
                for name, array in inputs.items()
            }
        names = list(outputs) if outputs else [spec.name for spec in self._outputs]
        results = self._session.run(names, feed)
        return {
            name: to_bytes(value) if value.dtype == object else value
            for name, value in zip(names, results, strict=True)
        }

    def close(self) -> None:
        del self._session


def _spec(arg: Any) -> TensorSpec:
    datatype = ORT_TYPES.get(arg.type)
    if datatype is None:
        raise ConfigError(
            f"tensor '{arg.name}' has type {arg.type}, which the v2 protocol cannot carry"
        )
    shape = arg.shape if isinstance(arg.shape, list) else []
    dims = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in shape)
    return TensorSpec(arg.name, datatype, dims)
