"""Helpers the framework runtimes share: signatures from config.yaml and BYTES conversions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from modelport.core.config import ModelConfig
from modelport.core.errors import ConfigError, InvalidInput, ModelLoadError
from modelport.core.runtime import Signature
from modelport.core.types import TensorSpec


def find_model_file(
    version_dir: Path, config: ModelConfig, names: Sequence[str], *, directories: bool = False
) -> Path | None:
    """The first of `names` (or config.yaml's default_model_filename) in version_dir; with
    `directories`, a directory of that name counts too (a SavedModel is one)."""
    present = Path.exists if directories else Path.is_file
    for name in (config.default_model_filename,) if config.default_model_filename else names:
        if present(version_dir / name):
            return version_dir / name
    return None


def require_model_file(
    version_dir: Path, config: ModelConfig, names: Sequence[str], *, directories: bool = False
) -> Path:
    path = find_model_file(version_dir, config, names, directories=directories)
    if path is None:
        wanted = config.default_model_filename or " or ".join(names)
        raise ModelLoadError(f"{version_dir.name}/{wanted} not found")
    return path


def configured(config: ModelConfig) -> Signature:
    """The inputs and outputs config.yaml lists (possibly none)."""
    return Signature(
        tuple(tensor.spec() for tensor in config.inputs),
        tuple(tensor.spec() for tensor in config.outputs),
    )


def require_configured(config: ModelConfig, why: str) -> Signature:
    signature = configured(config)
    if not signature.inputs or not signature.outputs:
        raise ConfigError(
            f"{why}: list `inputs` and `outputs` (name, datatype, shape) in config.yaml"
        )
    return signature


def positional(specs: Sequence[TensorSpec], values: Sequence[object], what: str) -> None:
    if len(specs) != len(values):
        raise ConfigError(
            f"config.yaml lists {len(specs)} {what}(s) but the model has {len(values)}"
        )


def to_str(name: str, array: np.ndarray) -> np.ndarray:
    """BYTES elements as Python str (what ONNX, scikit-learn and text models take)."""
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat_in):
        try:
            flat_out[i] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        except UnicodeDecodeError:
            raise InvalidInput(
                f"input '{name}': element {i} is not valid UTF-8, which this model requires"
            ) from None
    return out


def to_bytes(array: np.ndarray) -> np.ndarray:
    """Any array of strings (str, bytes, numpy unicode) as the core's object array of bytes."""
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat_in):
        flat_out[i] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
    return out
