"""Magnitude pruning of an ONNX model's weights.

- unstructured: in each weight tensor, the `fraction` of weights with the smallest magnitude
  become zero;
- channel: in each layer, the `fraction` of output channels (Conv filters, rows or columns of a
  Gemm/MatMul weight) with the smallest L2 norm become zero. The last layer is left whole: its
  channels are the model's outputs (classes), and removing one would remove a class.

Zeros take as much room as any other float in an ONNX file; they pay off compressed (the report
shows compressed size) and on runtimes with sparse kernels, and they are a step before quantizing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from modelport.optimize.errors import OptimizeError

STRUCTURES = ("unstructured", "channel")


@dataclass(frozen=True)
class PrunedTensor:
    name: str
    op: str
    elements: int
    zeros: int


@dataclass(frozen=True)
class PruneResult:
    path: Path
    tensors: tuple[PrunedTensor, ...]

    @property
    def sparsity(self) -> float:
        total = sum(t.elements for t in self.tensors)
        return sum(t.zeros for t in self.tensors) / total if total else 0.0


@dataclass(frozen=True)
class _Weight:
    name: str
    op: str
    channel_axis: int


def prune(
    source: Path | str,
    output: Path | str,
    *,
    fraction: float = 0.5,
    structure: str = "unstructured",
) -> PruneResult:
    if not 0.0 <= fraction < 1.0:
        raise OptimizeError(f"the pruning fraction must be in [0, 1), not {fraction}")
    if structure not in STRUCTURES:
        raise OptimizeError(f"unknown pruning structure {structure!r}; one of {STRUCTURES}")
    model = onnx.load(str(source))
    initializers = {init.name: init for init in model.graph.initializer}
    weights = [w for w in _weights(model.graph) if _is_float(initializers[w.name])]
    if not weights:
        raise OptimizeError(
            f"{source}: no float Conv/Gemm/MatMul weights to prune (prune before quantizing)"
        )
    if structure == "channel":
        weights = weights[:-1]
    results = []
    for weight in weights:
        tensor = initializers[weight.name]
        array = numpy_helper.to_array(tensor).copy()
        if structure == "unstructured":
            _zero_smallest(array, fraction)
        else:
            _zero_channels(array, fraction, weight.channel_axis)
        tensor.CopyFrom(numpy_helper.from_array(array, weight.name))
        results.append(PrunedTensor(weight.name, weight.op, array.size, int(np.sum(array == 0))))
    onnx.save(model, str(output))
    return PruneResult(Path(output), tuple(results))


def _weights(graph: onnx.GraphProto) -> list[_Weight]:
    """Weight initializers of Conv, ConvTranspose, Gemm and MatMul nodes, in graph order, each
    with the axis of its output channels."""
    initializers = {init.name: init for init in graph.initializer}
    seen: set[str] = set()
    found = []
    for node in graph.node:
        if len(node.input) < 2 or node.input[1] not in initializers or node.input[1] in seen:
            continue
        name = node.input[1]
        dims = len(initializers[name].dims)
        if node.op_type == "Conv" and dims >= 3:
            axis = 0
        elif node.op_type == "ConvTranspose" and dims >= 3:
            axis = 1
        elif node.op_type == "Gemm" and dims == 2:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 0 if trans_b else 1
        elif node.op_type == "MatMul" and dims == 2:
            axis = 1
        else:
            continue
        seen.add(name)
        found.append(_Weight(name, node.op_type, axis))
    return found


def _is_float(tensor: onnx.TensorProto) -> bool:
    return tensor.data_type in (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
    )


def _zero_smallest(array: np.ndarray, fraction: float) -> None:
    count = round(array.size * fraction)
    if count == 0:
        return
    flat = array.reshape(-1)
    smallest = np.argpartition(np.abs(flat), count - 1)[:count]
    flat[smallest] = 0


def _zero_channels(array: np.ndarray, fraction: float, axis: int) -> None:
    channels = array.shape[axis]
    count = min(round(channels * fraction), channels - 1)  # keep at least one channel
    if count <= 0:
        return
    moved = np.moveaxis(array, axis, 0)  # a view: writes land in `array`
    norms = np.sqrt(np.sum(moved.reshape(channels, -1).astype(np.float64) ** 2, axis=1))
    moved[np.argsort(norms, kind="stable")[:count]] = 0
