"""Converting a trained model to ONNX, checked against the original.

The framework comes from the file, as in the model repository: `.pt` (TorchScript), `.pt2`
(torch.export), `.joblib`/`.pkl` (scikit-learn, or the scikit-learn API of XGBoost/LightGBM;
pickles run code when loaded, so they need `trust=True`), `.json`/`.ubj` (XGBoost), `.txt`
(LightGBM), `.keras`/`.h5` (Keras) and a SavedModel directory. A torch `nn.Module` is named by
import path, `package.module:Name` (a class or a function returning the module), with optional
`weights` (a state dict).

The ONNX model keeps the tensor names modelport serves the original under (`input`, `predict`,
`predict_proba` for tabular models; `output`, `output_N` for torch; the Keras/SavedModel names),
so a client does not change when the converted version replaces the original. Both models run
on the sample input and every output is compared; beyond the tolerance the conversion fails
with the differences.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from modelport.optimize.data import Dataset
from modelport.optimize.errors import ConversionMismatch, OptimizeError
from modelport.optimize.measure import run_model

OPSET = 17
TREE_OPSET = 15  # the newest onnxmltools' XGBoost and LightGBM converters write
PREDICT, PROBA = "predict", "predict_proba"


@dataclass(frozen=True)
class OutputDifference:
    name: str
    max_abs: float
    max_rel: float
    mismatched: int
    elements: int


@dataclass(frozen=True)
class ConversionReport:
    source: str
    framework: str
    path: Path
    differences: tuple[OutputDifference, ...]
    atol: float
    rtol: float
    inputs: tuple[str, ...] = field(default=())
    outputs: tuple[str, ...] = field(default=())

    @property
    def max_abs(self) -> float:
        return max((d.max_abs for d in self.differences), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((d.max_rel for d in self.differences), default=0.0)

    @property
    def equivalent(self) -> bool:
        return all(d.mismatched == 0 for d in self.differences)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "framework": self.framework,
            "path": str(self.path),
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "atol": self.atol,
            "rtol": self.rtol,
            "max_abs_diff": self.max_abs,
            "max_rel_diff": self.max_rel,
            "outputs_compared": [vars(d) for d in self.differences],
        }


# A converter writes the ONNX file and returns the original's outputs on the sample, by the
# names the ONNX model's outputs get.
Converter = Callable[[Any, Dataset, Path], dict[str, np.ndarray]]


def detect_framework(source: Any) -> str:
    if not isinstance(source, str | Path):
        import torch

        if isinstance(source, torch.nn.Module):
            return "torch-module"
        raise OptimizeError(f"cannot convert a {type(source).__name__}")
    path = Path(source)
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "tensorflow"
        raise OptimizeError(f"{path} is a directory but not a TensorFlow SavedModel")
    if not path.exists():
        if ":" in str(source) and not str(source).startswith((".", "/")):
            return "torch-module"
        raise OptimizeError(f"{source} does not exist")
    suffix = path.suffix.lower()
    frameworks = {
        ".pt": "torchscript",
        ".pt2": "torch-export",
        ".joblib": "sklearn",
        ".pkl": "sklearn",
        ".pickle": "sklearn",
        ".json": "xgboost",
        ".ubj": "xgboost",
        ".txt": "lightgbm",
        ".keras": "keras",
        ".h5": "keras",
    }
    if suffix == ".onnx":
        raise OptimizeError(f"{path} is already ONNX; use `modelport optimize` on it")
    if suffix not in frameworks:
        raise OptimizeError(
            f"cannot tell the framework of {path.name}; expected one of "
            f"{sorted(frameworks)}, a SavedModel directory or package.module:Name"
        )
    return frameworks[suffix]


def convert(
    source: str | Path | Any,
    sample: Dataset,
    output: Path | str,
    *,
    weights: Path | None = None,
    trust: bool = False,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ConversionReport:
    """Convert `source` (a model file, an import path or a torch module) to ONNX at `output`
    and check both agree on `sample`."""
    framework = detect_framework(source)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if framework == "sklearn" and not trust:
        raise OptimizeError(
            f"{source} is a pickle, which runs code when loaded; convert it only if you trust "
            "where it came from, with --trust"
        )
    converters: dict[str, Converter] = {
        "torchscript": _from_torchscript,
        "torch-export": _from_torch_export,
        "torch-module": lambda s, d, o: _from_torch_module(s, d, o, weights),
        "sklearn": _from_pickle,
        "xgboost": _from_xgboost,
        "lightgbm": _from_lightgbm,
        "keras": _from_keras,
        "tensorflow": _from_saved_model,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # converters warn about their own deprecations
        expected = converters[framework](source, sample, output)
    onnx.checker.check_model(str(output))
    actual = run_model(output, sample)
    differences = tuple(
        _compare(name, expected[name], actual[name], atol, rtol) for name in expected
    )
    model = onnx.load(str(output), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    report = ConversionReport(
        str(source),
        framework,
        output,
        differences,
        atol,
        rtol,
        tuple(i.name for i in model.graph.input if i.name not in initializers),
        tuple(o.name for o in model.graph.output),
    )
    if not report.equivalent:
        worst = ", ".join(
            f"{d.name}: {d.mismatched}/{d.elements} beyond tolerance, max abs {d.max_abs:.3g}"
            for d in differences
            if d.mismatched
        )
        raise ConversionMismatch(
            f"the ONNX model differs from {source} (atol {atol}, rtol {rtol}): {worst}"
        )
    return report


def _compare(
    name: str, expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float
) -> OutputDifference:
    expected, actual = np.asarray(expected), np.asarray(actual)
    if expected.size != actual.size:
        raise ConversionMismatch(
            f"output {name!r}: the original gives shape {expected.shape}, ONNX {actual.shape}"
        )
    expected, actual = expected.reshape(-1), actual.reshape(-1)
    if expected.dtype.kind in "OSU" or actual.dtype.kind in "OSU":
        mismatched = int(sum(_text(a) != _text(b) for a, b in zip(expected, actual, strict=True)))
        return OutputDifference(name, float(mismatched > 0), 0.0, mismatched, expected.size)
    a, b = expected.astype(np.float64), actual.astype(np.float64)
    gap = np.abs(a - b)
    relative = gap / np.maximum(np.abs(a), 1e-12)
    mismatched = int(np.sum(gap > atol + rtol * np.abs(a)))
    return OutputDifference(
        name, float(gap.max(initial=0)), float(relative.max(initial=0)), mismatched, a.size
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---- renaming -----------------------------------------------------------------------------


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


def _numbered(prefix: str, count: int) -> list[str]:
    return [prefix] if count == 1 else [f"{prefix}_{i}" for i in range(count)]


# ---- torch ---------------------------------------------------------------------------------


def _torch_inputs(sample: Dataset, names: Sequence[str]) -> tuple[Any, ...]:
    import torch

    feeds = sample.feeds(list(names))
    arrays = [feeds[name] for name in names]
    if len(arrays[0]) == 1:  # torch.export treats a batch of 1 as a constant dimension
        arrays = [np.concatenate([a, a]) for a in arrays]
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


def _torch_outputs(result: Any) -> list[np.ndarray]:
    values = list(result) if isinstance(result, list | tuple) else [result]
    return [value.detach().cpu().numpy() for value in values]


def _from_torchscript(source: Any, sample: Dataset, output: Path) -> dict[str, np.ndarray]:
    import torch

    module = torch.jit.load(str(source), map_location="cpu").eval()
    names = _numbered("input", len(sample.inputs)) if "x" not in sample.inputs else ["input"]
    args = _torch_inputs(sample, names)
    return _export_legacy(module, args, names, sample, output)


def _export_legacy(
    module: Any, args: tuple[Any, ...], names: Sequence[str], sample: Dataset, output: Path
) -> dict[str, np.ndarray]:
    """torch.export cannot trace TorchScript; its exporter is the TorchScript-based one."""
    import torch

    with torch.no_grad():
        results = _torch_outputs(module(*args))
    outputs = _numbered("output", len(results))
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


def _from_torch_export(source: Any, sample: Dataset, output: Path) -> dict[str, np.ndarray]:
    import torch

    program = torch.export.load(str(source))
    names = [
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    args = _torch_inputs(sample, names)
    return _export_program(program, program.module(), args, names, sample, output)


def _from_torch_module(
    source: Any, sample: Dataset, output: Path, weights: Path | None
) -> dict[str, np.ndarray]:
    import torch

    module = source if isinstance(source, torch.nn.Module) else _import_module(str(source))
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

    with torch.no_grad():
        results = _torch_outputs(module(*args))
    torch.onnx.export(program, args, str(output), dynamo=True, external_data=False, verbose=False)
    outputs = _numbered("output", len(results))
    rename_tensors(output, names, outputs)
    return _on_sample(results, outputs, sample)


def _on_sample(results: list[np.ndarray], names: Sequence[str], sample: Dataset) -> dict[str, Any]:
    """Outputs computed on the (possibly doubled) export batch, cut to the sample's rows."""
    return {name: value[: len(sample)] for name, value in zip(names, results, strict=True)}


def _import_module(path: str) -> Any:
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


# ---- tabular -------------------------------------------------------------------------------


def _features(sample: Dataset) -> np.ndarray:
    x = np.asarray(sample.x, dtype=np.float32)
    if x.ndim != 2:
        raise OptimizeError(f"tabular models take a 2-D feature matrix; the sample is {x.shape}")
    return x


def _tabular_reference(estimator: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    results = {PREDICT: np.asarray(estimator.predict(x))}
    if hasattr(estimator, "predict_proba"):
        results[PROBA] = np.asarray(estimator.predict_proba(x))
    return results


def _from_pickle(source: Any, sample: Dataset, output: Path) -> dict[str, np.ndarray]:
    import joblib

    estimator = joblib.load(str(source))
    kind = type(estimator).__module__.split(".")[0]
    x = _features(sample)
    if kind == "xgboost":
        return _write_xgboost(estimator, x, output)
    if kind == "lightgbm":
        return _write_lightgbm(estimator.booster_, x, output)
    from skl2onnx import to_onnx

    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "predict_proba") else None
    model = to_onnx(estimator, x[:1], options=options, target_opset={"": OPSET, "ai.onnx.ml": 3})
    return _write_tabular(model, _tabular_reference(estimator, x), output)


def _write_tabular(
    model: onnx.ModelProto, expected: dict[str, np.ndarray], output: Path
) -> dict[str, np.ndarray]:
    onnx.save(model, str(output))
    rename_tensors(output, ["input"], list(expected)[: len(model.graph.output)])
    return expected


def _from_xgboost(source: Any, sample: Dataset, output: Path) -> dict[str, np.ndarray]:
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(str(source))
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    estimator_class = (
        xgboost.XGBClassifier
        if objective.startswith(("binary:", "multi:"))
        else xgboost.XGBRegressor
    )
    estimator = estimator_class()
    estimator.load_model(str(source))
    return _write_xgboost(estimator, _features(sample), output)


def _write_xgboost(estimator: Any, x: np.ndarray, output: Path) -> dict[str, np.ndarray]:
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = convert_xgboost(
        estimator,
        initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
        target_opset=TREE_OPSET,
    )
    return _write_tabular(model, _tabular_reference(estimator, x), output)


def _from_lightgbm(source: Any, sample: Dataset, output: Path) -> dict[str, np.ndarray]:
    import lightgbm

    return _write_lightgbm(lightgbm.Booster(model_file=str(source)), _features(sample), output)


def _write_lightgbm(booster: Any, x: np.ndarray, output: Path) -> dict[str, np.ndarray]:
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = convert_lightgbm(
        booster,
        initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
        target_opset=TREE_OPSET,
        zipmap=False,
    )
    raw = np.asarray(booster.predict(x))
    objective = booster.params.get("objective") or booster.dump_model()["objective"]
    if str(objective).startswith("binary"):
        proba = np.stack([1 - raw, raw], axis=1)
        expected = {PREDICT: proba.argmax(axis=1), PROBA: proba}
    elif str(objective).startswith("multiclass"):
        expected = {PREDICT: raw.argmax(axis=1), PROBA: raw}
    else:
        expected = {PREDICT: raw}
    return _write_tabular(model, expected, output)


# ---- tensorflow ----------------------------------------------------------------------------


def _from_keras(source: Any, sample: Dataset, output: Path) -> dict[str, np.ndarray]:
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


def _from_saved_model(source: Any, sample: Dataset, output: Path) -> dict[str, np.ndarray]:
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
