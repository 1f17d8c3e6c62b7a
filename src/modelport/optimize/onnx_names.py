"""Naming an exported ONNX graph's inputs and outputs the way modelport serves them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx

from modelport.optimize.errors import OptimizeError

OPSET = 17
TREE_OPSET = 15  # the newest onnxmltools' XGBoost and LightGBM converters write


def rename_tensors(path: Path, inputs: Sequence[str], outputs: Sequence[str]) -> None:
    """Give the graph's inputs and outputs these names, by position."""
    model = onnx.load(str(path))
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    renames = {}
    for values, names in ((graph_inputs, inputs), (model.graph.output, outputs)):
        if len(values) != len(names):
            raise OptimizeError(
                f"expected {len(names)} tensors {list(names)}, the ONNX graph has "
                f"{[v.name for v in values]}"
            )
        renames.update({v.name: n for v, n in zip(values, names, strict=True) if v.name != n})
    if renames:
        _rename(model.graph, renames)
        onnx.save(model, str(path))


def _rename(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs]:
                _rename(subgraph, renames)


def numbered(prefix: str, count: int) -> list[str]:
    return [prefix] if count == 1 else [f"{prefix}_{i}" for i in range(count)]
