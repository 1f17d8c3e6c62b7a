"""torch to ONNX: TorchScript files (through the TorchScript-based exporter, since torch.export
cannot trace them), torch.export programs and nn.Modules (through torch.export). Inputs are named
as the torch runtime serves them (`input`, or the program's own names); outputs `output` or
`output_N`."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelport.optimize.data import Dataset
from modelport.optimize.errors import OptimizeError
from modelport.optimize.onnx_names import OPSET, numbered, rename_tensors


def _torch_inputs(sample: Dataset, names: Sequence[str]) -> tuple[Any, ...]:
    import torch

    feeds = sample.feeds(list(names))
    arrays = [feeds[name] for name in names]
    if len(arrays[0]) == 1:  # torch.export treats a batch of 1 as a constant dimension
        arrays = [np.concatenate([a, a]) for a in arrays]
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


def _reference(module: Any, args: tuple[Any, ...]) -> list[np.ndarray]:
    """The original's outputs on the export batch, to compare the ONNX model with."""
    import torch

    with torch.no_grad():
        result = module(*args)
    values = list(result) if isinstance(result, list | tuple) else [result]
    return [value.detach().cpu().numpy() for value in values]


def from_torchscript(source: Any, sample: Dataset, output: Path) -> dict[str, np.ndarray]:
    import torch

    # torch.jit.load has no annotations
    module = torch.jit.load(str(source), map_location="cpu").eval()  # type: ignore[no-untyped-call]
    names = numbered("input", len(sample.inputs)) if "x" not in sample.inputs else ["input"]
    args = _torch_inputs(sample, names)
    return _export_legacy(module, args, names, sample, output)


def _export_legacy(
    module: Any,
    args: tuple[Any, ...],
    names: Sequence[str],
    sample: Dataset,
    output: Path,
) -> dict[str, np.ndarray]:
    """torch.export cannot trace TorchScript; its exporter is the TorchScript-based one."""
    import torch

    results = _reference(module, args)
    outputs = numbered("output", len(results))
    torch.onnx.export(
        module,
        args,
        str(output),
        dynamo=False,
        input_names=names,
        output_names=outputs,
        dynamic_axes={name: {0: "batch"} for name in [*names, *outputs]},
        opset_version=OPSET,
    )
    return _on_sample(results, outputs, sample)


def from_torch_export(source: Any, sample: Dataset, output: Path) -> dict[str, np.ndarray]:
    import torch

    program = torch.export.load(str(source))
    names = [
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    args = _torch_inputs(sample, names)
    return _export_program(program, program.module(), args, names, sample, output)


def from_torch_module(
    source: Any, sample: Dataset, output: Path, weights: Path | None
) -> dict[str, np.ndarray]:
    import torch

    module = source if isinstance(source, torch.nn.Module) else import_object(str(source))
    if weights is not None:
        module.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    module.eval()
    names = ["input"] if "x" in sample.inputs else sorted(sample.inputs)
    args = _torch_inputs(sample, names)
    if any(isinstance(part, torch.jit.ScriptModule) for part in module.modules()):
        # TorchScript inside: script the whole module, for the TorchScript-based exporter
        scripted = (
            module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
        )
        return _export_legacy(scripted, args, names, sample, output)
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, args, dynamic_shapes=tuple({0: batch} for _ in args))
    return _export_program(program, module, args, names, sample, output)


def _export_program(
    program: Any,
    module: Any,
    args: tuple[Any, ...],
    names: Sequence[str],
    sample: Dataset,
    output: Path,
) -> dict[str, np.ndarray]:
    import torch

    results = _reference(module, args)
    torch.onnx.export(program, args, str(output), dynamo=True, external_data=False, verbose=False)
    outputs = numbered("output", len(results))
    rename_tensors(output, names, outputs)
    return _on_sample(results, outputs, sample)


def _on_sample(results: list[np.ndarray], names: Sequence[str], sample: Dataset) -> dict[str, Any]:
    """Outputs computed on the (possibly doubled) export batch, cut to the sample's rows."""
    return {name: value[: len(sample)] for name, value in zip(names, results, strict=True)}


def import_object(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    sys.path.insert(0, str(Path.cwd()))
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise OptimizeError(f"cannot import {path}: {exc}") from None
    finally:
        sys.path.remove(str(Path.cwd()))
    import torch

    module = target() if callable(target) and not isinstance(target, torch.nn.Module) else target
    if not isinstance(module, torch.nn.Module):
        raise OptimizeError(f"{path} gives a {type(module).__name__}, not a torch.nn.Module")
    return module
