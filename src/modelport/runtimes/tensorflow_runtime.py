"""TensorFlow runtime: SavedModel directories (model.savedmodel/) and Keras files (.keras, .h5).

A SavedModel serves its `serving_default` signature (or `parameters.signature_name`), whose
tensor names, dtypes and shapes it records. A Keras model serves its inputs and outputs by name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from modelport.core.config import ModelConfig
from modelport.core.errors import ConfigError, InferenceFailed, ModelLoadError
from modelport.core.runtime import Capabilities, Signature
from modelport.core.types import DataType, TensorSpec
from modelport.runtimes.common import find_model_file, require_model_file

log = logging.getLogger("modelport.runtimes.tensorflow")

FILENAMES = ("model.savedmodel", "model.keras", "model.h5")
DEFAULT_SIGNATURE = "serving_default"

Call = Callable[[dict[str, np.ndarray]], dict[str, Any]]


class TensorFlowRuntime:
    platform = "tensorflow"
    triton_platform = "tensorflow_savedmodel"
    capabilities = Capabilities(thread_safe=True, releases_gil=True)

    def find_model_file(self, version_dir: Path, config: ModelConfig) -> Path | None:
        return find_model_file(version_dir, config, FILENAMES, directories=True)

    def load(self, version_dir: Path, config: ModelConfig) -> TensorFlowModel:
        path = require_model_file(version_dir, config, FILENAMES, directories=True)
        _set_threads(config)
        try:
            if path.is_dir():
                name = str(config.parameters.get("signature_name", DEFAULT_SIGNATURE))
                return _saved_model(path, name)
            return _keras(path)
        except (OSError, ValueError, tf.errors.OpError) as exc:
            detail = " ".join(str(exc).split())[:300]
            raise ModelLoadError(f"tensorflow could not load {path.name}: {detail}") from None


def _set_threads(config: ModelConfig) -> None:
    threading = tf.config.threading
    try:
        if config.runtime.intra_op_threads:
            threading.set_intra_op_parallelism_threads(config.runtime.intra_op_threads)
        if config.runtime.inter_op_threads:
            threading.set_inter_op_parallelism_threads(config.runtime.inter_op_threads)
    except RuntimeError:
        log.warning("tensorflow thread pools are set once per process; keeping the first setting")


def _spec(name: str, dtype: Any, shape: Any) -> TensorSpec:
    numpy_dtype = tf.as_dtype(dtype).as_numpy_dtype
    try:
        datatype = DataType.from_numpy(np.dtype(numpy_dtype))
    except (TypeError, ValueError):
        raise ConfigError(f"tensor '{name}' has dtype {dtype}, which v2 cannot carry") from None
    dims = tuple(-1 if dim is None else int(dim) for dim in tuple(shape))
    return TensorSpec(name, datatype, dims)


def _saved_model(path: Path, signature_name: str) -> TensorFlowModel:
    loaded = tf.saved_model.load(str(path))
    function = loaded.signatures.get(signature_name)
    if function is None:
        raise ConfigError(
            f"{path.name} has no signature '{signature_name}' "
            f"(it has: {', '.join(loaded.signatures) or 'none'})"
        )
    _, keywords = function.structured_input_signature
    inputs = tuple(_spec(name, spec.dtype, spec.shape) for name, spec in keywords.items())
    outputs = tuple(
        _spec(name, spec.dtype, spec.shape) for name, spec in function.structured_outputs.items()
    )

    def call(feed: dict[str, np.ndarray]) -> dict[str, Any]:
        result: dict[str, Any] = function(**{n: tf.constant(a) for n, a in feed.items()})
        return result

    # keep `loaded` alive: the signature's variables belong to it
    return TensorFlowModel(call, Signature(inputs, outputs), owner=loaded)


def _keras(path: Path) -> TensorFlowModel:
    import keras

    model = keras.saving.load_model(str(path), compile=False)
    names = [tensor.name for tensor in model.inputs]
    inputs = tuple(
        _spec(name, tensor.dtype, tensor.shape)
        for name, tensor in zip(names, model.inputs, strict=True)
    )
    output_names = keras_output_names(model)
    outputs = tuple(
        _spec(name, tensor.dtype, tensor.shape)
        for name, tensor in zip(output_names, model.outputs, strict=True)
    )

    def call(feed: dict[str, np.ndarray]) -> dict[str, Any]:
        args = [feed[name] for name in names]
        result = model(args[0] if len(args) == 1 else args, training=False)
        if isinstance(result, dict):
            return result
        values = list(result) if isinstance(result, list | tuple) else [result]
        return dict(zip(output_names, values, strict=True))

    return TensorFlowModel(call, Signature(inputs, outputs), owner=model)


def keras_output_names(model: Any) -> list[str]:
    """Functional models name their outputs; a Sequential model's output is named after the
    layer that makes it."""
    names = getattr(model, "output_names", None)
    if names:
        return list(names)
    return [tensor._keras_history.operation.name for tensor in model.outputs]


class TensorFlowModel:
    def __init__(self, call: Call, signature: Signature, owner: Any) -> None:
        self._call = call
        self._signature = signature
        self._owner = owner

    def signature(self) -> Signature:
        return self._signature

    def infer(
        self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None
    ) -> dict[str, np.ndarray]:
        result = self._call(inputs)
        wanted = outputs or tuple(spec.name for spec in self._signature.outputs)
        missing = [name for name in wanted if name not in result]
        if missing:
            raise InferenceFailed(f"the model returned no {missing}")
        return {name: np.asarray(result[name]) for name in wanted}

    def close(self) -> None:
        self._owner = None
        self._call = _closed


def _closed(feed: dict[str, np.ndarray]) -> dict[str, Any]:
    raise InferenceFailed("the model was unloaded")
