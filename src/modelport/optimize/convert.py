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

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from modelport.optimize.data import Dataset
from modelport.optimize.errors import ConversionMismatch, OptimizeError
from modelport.optimize.measure import run_model


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
    converter = _converter(framework, weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # converters warn about their own deprecations
        expected = converter(source, sample, output)
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
        name,
        float(gap.max(initial=0)),
        float(relative.max(initial=0)),
        mismatched,
        a.size,
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _converter(framework: str, weights: Path | None) -> Converter:
    """The framework's converter, imported only when needed."""
    if framework in ("torchscript", "torch-export", "torch-module"):
        from modelport.optimize import from_torch

        if framework == "torchscript":
            return from_torch.from_torchscript
        if framework == "torch-export":
            return from_torch.from_torch_export
        return lambda s, d, o: from_torch.from_torch_module(s, d, o, weights)
    if framework in ("sklearn", "xgboost", "lightgbm"):
        from modelport.optimize import from_tabular

        return {
            "sklearn": from_tabular.from_pickle,
            "xgboost": from_tabular.from_xgboost,
            "lightgbm": from_tabular.from_lightgbm,
        }[framework]
    from modelport.optimize import from_tensorflow

    return from_tensorflow.from_keras if framework == "keras" else from_tensorflow.from_saved_model
