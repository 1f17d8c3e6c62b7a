"""Keras models and TensorFlow SavedModels to ONNX (tf2onnx, through a tf.function: tf2onnx's
Keras entry point does not read Keras 3 models). Tensors keep the Keras / signature names."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from modelport.optimize.data import Dataset
from modelport.optimize.errors import OptimizeError
from modelport.optimize.onnx_names import OPSET, rename_tensors


def from_keras(source: Any, sample: Dataset, output: Path) -> dict[str, np.ndarray]:
    import keras
    import tensorflow as tf

    from modelport.runtimes.tensorflow_runtime import keras_output_names

    model = keras.saving.load_model(str(source), compile=False)
    names = [tensor.name for tensor in model.inputs]
    specs = [
        tf.TensorSpec((None, *tensor.shape[1:]), tensor.dtype, name=name)
        for name, tensor in zip(names, model.inputs, strict=True)
    ]
    output_names = keras_output_names(model)

    def call(*args: Any) -> Any:
        return model(args[0] if len(args) == 1 else list(args), training=False)

    feeds = sample.feeds(names)
    result = call(*[tf.constant(feeds[name]) for name in names])
    values = list(result) if isinstance(result, list | tuple) else [result]
    expected = {n: v.numpy() for n, v in zip(output_names, values, strict=True)}
    _tf_to_onnx(tf.function(call, input_signature=specs), specs, output, names, output_names)
    return expected


def from_saved_model(source: Any, sample: Dataset, output: Path) -> dict[str, np.ndarray]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(source))
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise OptimizeError(f"{source} has no serving_default signature")
    arguments = signature.structured_input_signature[1]
    names = list(arguments)
    specs = [tf.TensorSpec(arguments[n].shape, arguments[n].dtype, name=n) for n in names]
    output_names = list(signature.structured_outputs)

    def call(*args: Any) -> Any:
        result = signature(**dict(zip(names, args, strict=True)))
        return [result[name] for name in output_names]

    feeds = sample.feeds(names)
    result = call(*[tf.constant(feeds[name]) for name in names])
    expected = {n: v.numpy() for n, v in zip(output_names, result, strict=True)}
    _tf_to_onnx(tf.function(call, input_signature=specs), specs, output, names, output_names)
    return expected


def _tf_to_onnx(
    function: Any, specs: list[Any], output: Path, inputs: list[str], outputs: list[str]
) -> None:
    import tf2onnx

    with tempfile.TemporaryDirectory(prefix="modelport-tf2onnx-") as scratch:
        # tf2onnx writes large models' weights beside the file; keep them out of the output dir
        model, _ = tf2onnx.convert.from_function(
            function,
            input_signature=specs,
            opset=OPSET,
            output_path=str(Path(scratch) / "model.onnx"),
        )
    onnx.save(model, str(output))
    rename_tensors(output, inputs, outputs)
