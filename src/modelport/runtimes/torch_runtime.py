"""PyTorch runtime: TorchScript archives (model.pt) and torch.export programs (model.pt2).

TorchScript carries no tensor names or shapes, so config.yaml lists them; a .pt2 program carries
its inputs' names, dtypes and dynamic dimensions, and config.yaml may rename or narrow them.
Tensors map to the model's arguments and results by position. CPU here, CUDA when present.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelport.core.config import ModelConfig
from modelport.core.errors import ConfigError, InferenceFailed, InvalidInput, ModelLoadError
from modelport.core.runtime import Capabilities, Signature
from modelport.core.types import DataType, TensorSpec
from modelport.runtimes.common import (
    configured,
    find_model_file,
    positional,
    require_model_file,
)

log = logging.getLogger("modelport.runtimes.torch")

FILENAMES = ("model.pt2", "model.pt")

_FROM_TORCH: dict[torch.dtype, DataType] = {
    torch.bool: DataType.BOOL,
    torch.uint8: DataType.UINT8,
    torch.int8: DataType.INT8,
    torch.int16: DataType.INT16,
    torch.int32: DataType.INT32,
    torch.int64: DataType.INT64,
    torch.float16: DataType.FP16,
    torch.float32: DataType.FP32,
    torch.float64: DataType.FP64,
}


class TorchRuntime:
    platform = "torch"
    triton_platform = "pytorch_libtorch"
    capabilities = Capabilities(thread_safe=True, releases_gil=True)

    def find_model_file(self, version_dir: Path, config: ModelConfig) -> Path | None:
        return find_model_file(version_dir, config, FILENAMES)

    def load(self, version_dir: Path, config: ModelConfig) -> TorchModel:
        path = require_model_file(version_dir, config, FILENAMES)
        _set_threads(config)
        device = _device(config.runtime.device)
        if path.suffix == ".pt2":
            return _load_exported(path, config, device)
        return _load_torchscript(path, config, device)


def _device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device is {requested} but this machine has no CUDA device")
    return torch.device(requested)


def _set_threads(config: ModelConfig) -> None:
    """torch's thread pools are per process: the last model loaded with a setting decides."""
    if config.runtime.intra_op_threads:
        torch.set_num_threads(config.runtime.intra_op_threads)
    if config.runtime.inter_op_threads:
        try:
            torch.set_num_interop_threads(config.runtime.inter_op_threads)
        except RuntimeError:
            log.warning("torch inter-op threads can be set once per process; keeping the first")


def _load_torchscript(path: Path, config: ModelConfig, device: torch.device) -> TorchModel:
    try:
        # torch.jit.load carries no annotations
        module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ModelLoadError(
            f"{path.name} is not a TorchScript archive ({detail}). Save one with "
            "torch.jit.script(model).save('model.pt'), or a torch.export program as model.pt2"
        ) from None
    module.eval()
    signature = configured(config)
    if not signature.inputs or not signature.outputs:
        raise ConfigError(
            "a TorchScript model does not record its tensors: list `inputs` and `outputs` "
            "(name, datatype, shape) in config.yaml, in the order forward() takes and returns them"
        )
    return TorchModel(module, signature, device)


def _load_exported(path: Path, config: ModelConfig, device: torch.device) -> TorchModel:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ModelLoadError(f"torch.export could not load {path.name}: {detail}") from None
    declared = _exported_signature(program)
    own = configured(config)
    if own.inputs:
        positional(own.inputs, declared.inputs, "input")
    if own.outputs:
        positional(own.outputs, declared.outputs, "output")
    signature = Signature(own.inputs or declared.inputs, own.outputs or declared.outputs)
    module = program.module().to(device)
    return TorchModel(module, signature, device)


def _exported_signature(program: Any) -> Signature:
    """Inputs by argument name; outputs as output_0, output_1, ... (or output if one)."""
    graph_signature = program.graph_signature
    user_inputs = set(graph_signature.user_inputs)
    inputs = [
        _spec(node.name, node.meta.get("val"))
        for node in program.graph.nodes
        if node.op == "placeholder" and node.name in user_inputs
    ]
    output_node = next(node for node in program.graph.nodes if node.op == "output")
    results = [arg.meta.get("val") for arg in output_node.args[0]]
    names = ["output"] if len(results) == 1 else [f"output_{i}" for i in range(len(results))]
    outputs = [_spec(name, value) for name, value in zip(names, results, strict=True)]
    return Signature(tuple(inputs), tuple(outputs))


def _spec(name: str, value: Any) -> TensorSpec:
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"tensor '{name}' of the exported program is not a tensor")
    datatype = _FROM_TORCH.get(value.dtype)
    if datatype is None:
        raise ConfigError(f"tensor '{name}' has dtype {value.dtype}, which v2 cannot carry")
    shape = tuple(dim if isinstance(dim, int) else -1 for dim in value.shape)
    return TensorSpec(name, datatype, shape)


class TorchModel:
    def __init__(self, module: Any, signature: Signature, device: torch.device) -> None:
        self._module = module
        self._signature = signature
        self._device = device

    def signature(self) -> Signature:
        return self._signature

    def infer(
        self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None
    ) -> dict[str, np.ndarray]:
        # torch.from_numpy shares memory and warns on read-only buffers (decoded requests are)
        args = [
            torch.from_numpy(_writable(inputs[spec.name])).to(self._device)
            for spec in self._signature.inputs
        ]
        with torch.inference_mode():
            result = self._module(*args)
        values = _flatten(result, self._signature.outputs)
        wanted = outputs or tuple(spec.name for spec in self._signature.outputs)
        return {name: values[name].detach().cpu().numpy() for name in wanted}

    def close(self) -> None:
        del self._module


def _writable(array: np.ndarray) -> np.ndarray:
    if array.dtype == object:
        raise InvalidInput("torch models take numeric tensors, not BYTES")
    return array if array.flags.writeable else array.copy()


def _flatten(result: Any, specs: tuple[TensorSpec, ...]) -> dict[str, torch.Tensor]:
    if isinstance(result, dict):
        missing = [spec.name for spec in specs if spec.name not in result]
        if missing:
            raise InferenceFailed(f"the model returned no {missing} (it returned {list(result)})")
        return {spec.name: result[spec.name] for spec in specs}
    values = list(result) if isinstance(result, list | tuple) else [result]
    if len(values) != len(specs):
        raise InferenceFailed(
            f"the model returned {len(values)} tensor(s) but config.yaml lists {len(specs)} "
            "output(s)"
        )
    return {spec.name: value for spec, value in zip(specs, values, strict=True)}
