"""ONNX-to-ONNX optimizations: offline graph optimization, int8 dynamic and static (QDQ)
quantization, fp16. Each reads one model file and writes another."""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from modelport.optimize.data import Dataset
from modelport.optimize.errors import OptimizeError
from modelport.optimize.progress import Progress

QUANTIZE_MODES = ("int8-dynamic", "int8-static", "fp16")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
GRAPH_LEVELS = ("basic", "extended", "all")
CALIBRATION_BATCH = 16
# Dynamic quantization leaves convolutions in float: onnxruntime's ConvInteger ran a digits CNN
# 4x slower than float on our CPU (benchmarks/optimize_digits.py); int8-static is the one for CNNs.
DYNAMIC_OPS = ["MatMul", "Attention", "LSTM", "GRU", "Gather", "EmbedLayerNormalization"]


def optimize_graph(source: Path | str, output: Path | str, *, level: str = "extended") -> Path:
    """Run onnxruntime's graph optimizations once, offline, and save the result (constant
    folding, node fusions). `all` adds layout changes tied to this machine's CPU."""
    import onnxruntime as ort

    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if level not in levels:
        raise OptimizeError(f"unknown graph optimization level {level!r}; one of {GRAPH_LEVELS}")
    output = Path(output)
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[level]
    options.optimized_model_filepath = str(output)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return output


def quantize(
    source: Path | str,
    output: Path | str,
    *,
    mode: str = "int8-dynamic",
    calibration: Dataset | None = None,
    method: str = "minmax",
    per_channel: bool = False,
    keep_io_types: bool = True,
    progress: Progress | None = None,
) -> Path:
    """Quantize an ONNX model.

    - `int8-dynamic`: int8 weights of matrix products (MatMul, attention, recurrent layers,
      embeddings); activations are quantized at run time; no data needed.
    - `int8-static`: int8 weights and activations in QDQ form, with activation ranges taken
      from `calibration` data by `method` (minmax, entropy or percentile).
    - `fp16`: float16 weights and arithmetic; `keep_io_types` keeps float32 inputs/outputs.
    """
    source, output = Path(source), Path(output)
    if mode == "int8-dynamic":
        return _quantize_dynamic(source, output, per_channel)
    if mode == "int8-static":
        if calibration is None:
            raise OptimizeError("int8-static needs calibration data (--calibration FILE.npz)")
        return _quantize_static(source, output, calibration, method, per_channel, progress)
    if mode == "fp16":
        return to_fp16(source, output, keep_io_types=keep_io_types)
    raise OptimizeError(f"unknown quantization {mode!r}; choose one of {QUANTIZE_MODES}")


def to_fp16(source: Path | str, output: Path | str, *, keep_io_types: bool = True) -> Path:
    from onnxconverter_common import float16

    model = onnx.load(str(source))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "value truncated" for tiny weights
        converted = float16.convert_float_to_float16(model, keep_io_types=keep_io_types)
    onnx.save(converted, str(output))
    return Path(output)


def _quantize_dynamic(source: Path, output: Path, per_channel: bool) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _prepared(source) as prepared, _quiet():
        quantize_dynamic(
            prepared,
            output,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            op_types_to_quantize=DYNAMIC_OPS,
        )
    return output


def _quantize_static(
    source: Path,
    output: Path,
    calibration: Dataset,
    method: str,
    per_channel: bool,
    progress: Progress | None,
) -> Path:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise OptimizeError(f"unknown calibration method {method!r}; one of {CALIBRATION_METHODS}")
    with _prepared(source) as prepared, _quiet():
        reader = _CalibrationReader(prepared, calibration, progress)
        quantize_static(
            prepared,
            output,
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            calibrate_method=methods[method],
        )
    return output


class _CalibrationReader:
    """Feeds calibration batches to onnxruntime's calibrator, advancing the progress bar."""

    def __init__(self, model: Path, data: Dataset, progress: Progress | None) -> None:
        session = onnx.load(str(model), load_external_data=False).graph
        initializers = {init.name for init in session.initializer}
        self.inputs = [i for i in session.input if i.name not in initializers]
        names = [i.name for i in self.inputs]
        types = {
            i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
            for i in self.inputs
        }
        self.batches = [
            {n: np.ascontiguousarray(a, dtype=types[n]) for n, a in part.feeds(names).items()}
            for part in data.batches(CALIBRATION_BATCH)
        ]
        self.position = 0
        self.progress = progress
        self.task = progress.task("calibrating", len(self.batches)) if progress else None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.batches):
            return None
        batch = self.batches[self.position]
        self.position += 1
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)
        return batch

    def rewind(self) -> None:
        self.position = 0


@contextmanager
def _prepared(source: Path) -> Iterator[Path]:
    """onnxruntime's recommended pre-processing (shape inference and graph cleanup) before
    quantization; a model it cannot handle is quantized as it is."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="modelport-quant-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        try:
            with _quiet():
                quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        except Exception:  # pre-processing is an improvement, not a requirement
            prepared = source
        yield prepared


@contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantizer logs advice to the root logger; keep the user's terminal for
    our own progress and report."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
