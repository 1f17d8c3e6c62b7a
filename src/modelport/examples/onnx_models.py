"""Small ONNX graphs built from numpy weights: examples, test fixtures and benchmark models.

Nothing is downloaded; each builder is deterministic for a given seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17

_ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}

Dim = int | str


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _value(name: str, datatype: str, shape: Sequence[Dim]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, _ONNX_TYPES[datatype], list(shape))


def add_sub(datatype: str = "FP32", width: int = 16) -> onnx.ModelProto:
    """INPUT0, INPUT1 [N, width] -> OUTPUT0 = sum, OUTPUT1 = difference (Triton's 'simple')."""
    shape: list[Dim] = ["N", width]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [_value("INPUT0", datatype, shape), _value("INPUT1", datatype, shape)],
        [_value("OUTPUT0", datatype, shape), _value("OUTPUT1", datatype, shape)],
    )
    return _model(graph)


def offset(value: float, width: int = 4) -> onnx.ModelProto:
    """x [N, width] FP32 -> y = x + value: versions that differ by value tell apart who answered."""
    constant = numpy_helper.from_array(np.array(value, dtype=np.float32), "offset")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "offset"], ["y"])],
        "offset",
        [_value("x", "FP32", ["N", width])],
        [_value("y", "FP32", ["N", width])],
        initializer=[constant],
    )
    return _model(graph)


def mlp(sizes: Sequence[int] = (64, 256, 256, 10), seed: int = 0) -> onnx.ModelProto:
    """A ReLU MLP, FP32: input [N, sizes[0]] -> output [N, sizes[-1]] (logits)."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    current = "input"
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        weight = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        bias = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"W{layer}"),
            numpy_helper.from_array(bias, f"B{layer}"),
        ]
        last = layer == len(sizes) - 2
        out = "output" if last else f"h{layer}"
        gemm_out = out if last else f"g{layer}"
        nodes.append(helper.make_node("Gemm", [current, f"W{layer}", f"B{layer}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [_value("input", "FP32", ["N", sizes[0]])],
        [_value("output", "FP32", ["N", sizes[-1]])],
        initializer=initializers,
    )
    return _model(graph)


def linear(weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """output = input @ weight + bias, FP32: input [N, rows] -> output [N, columns]."""
    fan_in, fan_out = weight.shape
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "W", "B"], ["output"])],
        "linear",
        [_value("input", "FP32", ["N", fan_in])],
        [_value("output", "FP32", ["N", fan_out])],
        initializer=[
            numpy_helper.from_array(weight.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "B"),
        ],
    )
    return _model(graph)


def identity(datatype: str, shape: Sequence[Dim] = ("N", 4)) -> onnx.ModelProto:
    """x -> y unchanged, for any datatype (string tensors too)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"identity_{datatype.lower()}",
        [_value("x", datatype, shape)],
        [_value("y", datatype, shape)],
    )
    return _model(graph)


def text_lower() -> onnx.ModelProto:
    """BYTES text [N] -> the same text lower-cased (ONNX StringNormalizer).

    The locale is C.UTF-8 because onnxruntime's default, en_US.UTF-8, is missing on many
    minimal Linux images and the session then fails to initialize.
    """
    node = helper.make_node(
        "StringNormalizer", ["text"], ["lower"], case_change_action="LOWER", locale="C.UTF-8"
    )
    graph = helper.make_graph(
        [node],
        "text_lower",
        [_value("text", "BYTES", ["N"])],
        [_value("lower", "BYTES", ["N"])],
    )
    return _model(graph)


def save(model: onnx.ModelProto, path: str) -> None:
    onnx.save_model(model, path)
