"""The optimization toolkit's ONNX steps, measurement, report and gate, each checked by
recomputing what it claims with onnxruntime and numpy here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from modelport.optimize import (
    DataError,
    Deployment,
    GateRefused,
    MeasureOptions,
    OptimizeError,
    Plan,
    load_data,
    measure,
    optimize_graph,
    optimize_model,
    prune,
    quantize,
)
from modelport.optimize.metrics import get_metric
from tests.digits import Digits, describe, onnx_accuracy

QUICK = MeasureOptions(seconds=0.05)


def outputs(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def weights(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def test_graph_optimization_keeps_outputs(digits_onnx: Path, digit_data: Digits, tmp_path: Path):
    result = optimize_graph(digits_onnx, tmp_path / "graph.onnx", level="extended")
    x = digit_data.val.x
    np.testing.assert_allclose(outputs(result, x), outputs(digits_onnx, x), atol=1e-5)
    with pytest.raises(OptimizeError, match="unknown graph optimization level"):
        optimize_graph(digits_onnx, tmp_path / "bad.onnx", level="turbo")


def test_int8_dynamic_stores_int8_weights(digits_onnx: Path, digit_data: Digits, tmp_path: Path):
    result = quantize(digits_onnx, tmp_path / "dyn.onnx", mode="int8-dynamic")
    summary = describe(result)
    assert summary["initializer_elements"].get("int8", 0) > 60_000  # the 256x256 and 64x256
    assert "DynamicQuantizeLinear" in summary["ops"] or "MatMulInteger" in summary["ops"]
    base = onnx_accuracy(digits_onnx, digit_data.val)
    assert onnx_accuracy(result, digit_data.val) >= base - 0.02


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_int8_static_is_qdq_and_calibrated(
    digits_onnx: Path, digit_data: Digits, tmp_path: Path, method: str
):
    result = quantize(
        digits_onnx,
        tmp_path / f"{method}.onnx",
        mode="int8-static",
        calibration=digit_data.calibration,
        method=method,
    )
    ops = describe(result)["ops"]
    assert ops.get("QuantizeLinear", 0) >= 3 and ops.get("DequantizeLinear", 0) >= 3
    assert digits_onnx.stat().st_size / result.stat().st_size > 3.0
    base = onnx_accuracy(digits_onnx, digit_data.val)
    assert onnx_accuracy(result, digit_data.val) >= base - 0.02


def test_int8_static_needs_calibration_and_a_known_method(digits_onnx: Path, tmp_path: Path):
    with pytest.raises(OptimizeError, match="needs calibration data"):
        quantize(digits_onnx, tmp_path / "q.onnx", mode="int8-static")
    with pytest.raises(OptimizeError, match="unknown calibration method"):
        quantize(
            digits_onnx,
            tmp_path / "q.onnx",
            mode="int8-static",
            calibration=load_npz_like(),
            method="median",
        )
    with pytest.raises(OptimizeError, match="unknown quantization"):
        quantize(digits_onnx, tmp_path / "q.onnx", mode="int4")


def load_npz_like():  # type: ignore[no-untyped-def]
    from modelport.optimize import Dataset

    return Dataset.of(np.zeros((4, 64), np.float32))


def test_fp16_halves_weights_and_keeps_float32_io(
    digits_onnx: Path, digit_data: Digits, tmp_path: Path
):
    kept = quantize(digits_onnx, tmp_path / "fp16.onnx", mode="fp16")
    assert {w.dtype for w in weights(kept).values()} <= {np.dtype(np.float16), np.dtype(np.int64)}
    session = ort.InferenceSession(str(kept), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    x = digit_data.val.x
    np.testing.assert_allclose(outputs(kept, x), outputs(digits_onnx, x), atol=0.05)
    full = quantize(digits_onnx, tmp_path / "fp16io.onnx", mode="fp16", keep_io_types=False)
    session = ort.InferenceSession(str(full), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float16)"


def test_unstructured_pruning_zeroes_the_smallest_half(digits_onnx: Path, tmp_path: Path):
    before = weights(digits_onnx)
    result = prune(digits_onnx, tmp_path / "p.onnx", fraction=0.5)
    after = weights(result.path)
    matrices = [name for name, value in before.items() if value.ndim == 2]
    assert len(matrices) == 3 and len(result.tensors) == 3
    for name in matrices:
        original, pruned = before[name], after[name]
        zeros = pruned == 0
        assert zeros.mean() == pytest.approx(0.5, abs=1e-3)
        kept = np.abs(original[~zeros])
        assert kept.min() >= np.abs(original[zeros]).max()  # the smallest went
        np.testing.assert_array_equal(pruned[~zeros], original[~zeros])
    for name, value in before.items():
        if value.ndim == 1:  # biases stay
            np.testing.assert_array_equal(after[name], value)
    assert result.sparsity == pytest.approx(0.5, abs=1e-3)


def test_channel_pruning_zeroes_whole_output_channels(digits_onnx: Path, tmp_path: Path):
    result = prune(digits_onnx, tmp_path / "c.onnx", fraction=0.25, structure="channel")
    after = weights(result.path)
    layers = [t for t in result.tensors]
    assert len(layers) == 2  # the last layer (the classes) is left whole
    for tensor in layers:
        value = after[tensor.name]
        # output channels are rows of a transposed Gemm weight or columns of a MatMul weight
        axis = 0 if tensor.op == "Gemm" else 1
        dead = np.all(np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1) == 0, axis=1)
        assert dead.sum() == 64  # a quarter of 256
        assert tensor.zeros == 64 * value.size // value.shape[axis]
    last = [name for name, v in weights(digits_onnx).items() if v.ndim == 2][-1]
    np.testing.assert_array_equal(after[last], weights(digits_onnx)[last])


def test_pruning_refuses_bad_settings(digits_onnx: Path, tmp_path: Path):
    with pytest.raises(OptimizeError, match=r"in \[0, 1\)"):
        prune(digits_onnx, tmp_path / "x.onnx", fraction=1.0)
    quantized = quantize(digits_onnx, tmp_path / "q.onnx", mode="int8-dynamic")
    with pytest.raises(OptimizeError, match="prune before quantizing"):
        prune(quantized, tmp_path / "y.onnx", fraction=0.5)


def test_measurement_matches_independent_numbers(
    digits_onnx: Path, digit_data: Digits, tmp_path: Path
):
    pruned = prune(digits_onnx, tmp_path / "p.onnx", fraction=0.8).path
    for path in (digits_onnx, pruned):
        result = measure(path, digit_data.val, QUICK)
        assert result.size_bytes == path.stat().st_size
        assert result.value == pytest.approx(onnx_accuracy(path, digit_data.val))
        assert [entry.batch for entry in result.latency] == [1, 32]
        for entry in result.latency:
            assert 0 < entry.p50_ms <= entry.p99_ms and entry.runs >= 20
        assert result.throughput == pytest.approx(32 / (result.latency[1].p50_ms / 1e3))
        assert result.peak_memory_mb > 0
    zipped = measure(pruned, digit_data.val, QUICK).compressed_bytes
    assert zipped < 0.5 * pruned.stat().st_size  # 80% zeros compress


def test_metrics_agree_with_scikit_learn():
    from sklearn.metrics import f1_score, mean_absolute_error, mean_squared_error

    rng = np.random.default_rng(0)
    truth, guess = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    assert get_metric("f1").score(truth, guess) == pytest.approx(
        f1_score(truth, guess, average="macro")
    )
    a, b = rng.normal(size=100), rng.normal(size=100)
    assert get_metric("mae").score(a, b) == pytest.approx(mean_absolute_error(a, b))
    assert get_metric("rmse").score(a, b) == pytest.approx(np.sqrt(mean_squared_error(a, b)))
    assert get_metric("rmse").drop(2.0, 2.5) == (25.0, "%")  # errors: relative
    assert get_metric("accuracy").drop(0.9, 0.85) == (pytest.approx(5.0), "points")


def test_gate_refuses_destructive_pruning_and_deploys_nothing(
    digits_onnx: Path, digit_data: Digits, tmp_path: Path
):
    repository = tmp_path / "repo"
    repository.mkdir()
    output = tmp_path / "out" / "pruned.onnx"
    with pytest.raises(GateRefused, match="beyond the budget") as refused:
        optimize_model(
            digits_onnx,
            output,
            Plan(prune=0.99),
            digit_data.val,
            measure_options=QUICK,
            max_drop=1.0,
            deployment=Deployment(repository, "digits"),
        )
    assert list(repository.iterdir()) == []
    report = json.loads((tmp_path / "out" / "pruned.report.json").read_text())
    assert report["gate"]["passed"] is False and report["deployed"] is None
    assert report["gate"]["drop"] > 50
    assert refused.value.report.gate.passed is False


def test_optimize_model_deploys_within_budget(
    digits_onnx: Path, digit_data: Digits, tmp_path: Path
):
    repository = tmp_path / "repo"
    repository.mkdir()
    output = tmp_path / "digits.int8.onnx"
    outcome = optimize_model(
        digits_onnx,
        output,
        Plan(prune=0.5, quantize="int8-static"),
        digit_data.val,
        calibration=digit_data.calibration,
        measure_options=QUICK,
        max_drop=2.0,
        deployment=Deployment(repository, "digits", label="canary"),
    )
    names = [v.name for v in outcome.report.variants]
    assert names == ["original", "pruned 50%", "pruned 50% + int8-static minmax"]
    version = repository / "digits" / "1"
    assert sorted(p.name for p in version.iterdir()) == [
        "model.onnx",
        "optimize-report.json",
        "optimize-report.png",
    ]
    assert (version / "model.onnx").read_bytes() == output.read_bytes()
    stored = json.loads((version / "optimize-report.json").read_text())
    assert stored["gate"]["passed"] is True
    final = stored["variants"][-1]
    assert final["value"] == pytest.approx(onnx_accuracy(output, digit_data.val))
    assert final["size_bytes"] == output.stat().st_size
    assert "canary: 1" in (repository / "digits" / "config.yaml").read_text()
    assert outcome.report.deployed is not None and outcome.report.deployed["version"] == 1


def test_data_files(tmp_path: Path):
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,label\n1,2,0\n3,4.5,1\n")
    data = load_data(csv)
    np.testing.assert_array_equal(data.x, np.array([[1, 2], [3, 4.5]], np.float32))
    np.testing.assert_array_equal(data.labels(), [0, 1])
    assert load_data(csv, target="a").x.shape == (2, 2)
    with pytest.raises(DataError, match="no column named 'z'"):
        load_data(csv, target="z")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,y\n1,x\n")
    with pytest.raises(DataError, match="must be a number"):
        load_data(bad)
    rows = tmp_path / "rows.npz"
    np.savez(rows, x=np.zeros((3, 2)), y=np.zeros(2))
    with pytest.raises(DataError, match="3 rows of inputs but 2 labels"):
        load_data(rows)
    with pytest.raises(DataError, match=r"the model's inputs are \['a', 'b'\]"):
        load_data(tmp_path / "d.csv").feeds(["a", "b"])
    other = tmp_path / "x.parquet"
    other.write_text("")
    with pytest.raises(DataError, match=r"data files are \.npz"):
        load_data(other)
