"""Merging what a model file declares with what its config.yaml says."""

from __future__ import annotations

from dataclasses import dataclass

from modelport.core.config import DEFAULT_MAX_BATCH_SIZE, ModelConfig, TensorConfig
from modelport.core.errors import ConfigError
from modelport.core.runtime import Signature
from modelport.core.types import TensorSpec


@dataclass(frozen=True, slots=True)
class ServingSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    """0: the model has no batch dimension; N > 0: the first dimension is the batch, at most N."""


def resolve_signature(declared: Signature, config: ModelConfig) -> ServingSignature:
    inputs = _merge("input", declared.inputs, config.inputs)
    outputs = _merge("output", declared.outputs, config.outputs)
    if not inputs:
        raise ConfigError("the model declares no inputs and config.yaml lists none")
    if not outputs:
        raise ConfigError("the model declares no outputs and config.yaml lists none")
    batchable = all(spec.shape and spec.shape[0] == -1 for spec in (*inputs, *outputs))
    if config.max_batch_size is None:
        max_batch = DEFAULT_MAX_BATCH_SIZE if batchable else 0
    else:
        max_batch = config.max_batch_size
        if max_batch > 0 and not all(spec.shape and spec.shape[0] == -1 for spec in inputs):
            raise ConfigError(
                f"max_batch_size is {max_batch} but not every input has a dynamic (-1) first "
                "dimension to batch along"
            )
    return ServingSignature(inputs, outputs, max_batch)


def _merge(
    kind: str, declared: tuple[TensorSpec, ...], configured: tuple[TensorConfig, ...]
) -> tuple[TensorSpec, ...]:
    """Config entries refine the model's tensors; a model that declares none takes the config."""
    if not declared:
        return tuple(tensor.spec() for tensor in configured)
    by_name = {spec.name: spec for spec in declared}
    overrides = {}
    for tensor in configured:
        own = by_name.get(tensor.name)
        if own is None:
            raise ConfigError(
                f"config.yaml lists {kind} '{tensor.name}', which the model does not have "
                f"(it has: {', '.join(by_name)})"
            )
        if tensor.datatype is not own.datatype:
            raise ConfigError(
                f"config.yaml says {kind} '{tensor.name}' is {tensor.datatype.value}, the model "
                f"says {own.datatype.value}"
            )
        if not _compatible(own.shape, tensor.shape):
            raise ConfigError(
                f"config.yaml shape {list(tensor.shape)} for {kind} '{tensor.name}' contradicts "
                f"the model's {list(own.shape)}"
            )
        overrides[tensor.name] = tensor.spec()
    return tuple(overrides.get(spec.name, spec) for spec in declared)


def _compatible(model_shape: tuple[int, ...], config_shape: tuple[int, ...]) -> bool:
    if len(model_shape) != len(config_shape):
        return False
    return all(m == -1 or m == c for m, c in zip(model_shape, config_shape, strict=True))
