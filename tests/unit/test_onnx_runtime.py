from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from modelport.core.config import ModelConfig, RuntimeOptions
from modelport.core.errors import InvalidInput, ModelLoadError
from modelport.examples import onnx_models
from modelport.runtimes.onnx import OnnxRuntime, choose_providers, session_options


def test_missing_providers_are_skipped_and_cpu_is_always_last(
    caplog: pytest.LogCaptureFixture,
) -> None:
    available = set(ort.get_available_providers())
    with caplog.at_level(logging.WARNING):
        chosen = choose_providers(("tensorrt", "cuda", "CPUExecutionProvider"))
    assert chosen[-1] == "CPUExecutionProvider"
    for name in ("TensorrtExecutionProvider", "CUDAExecutionProvider"):
        assert (name in chosen) == (name in available)
        if name not in available:
            assert f"execution provider {name} is not available" in caplog.text


def test_session_options_follow_the_config() -> None:
    options = session_options(
        RuntimeOptions(intra_op_threads=1, inter_op_threads=2, graph_optimization_level="basic")
    )
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 2
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


def test_string_tensors_cross_as_bytes(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(onnx_models.identity("BYTES").SerializeToString())
    model = OnnxRuntime().load(tmp_path, ModelConfig())
    words = np.array([[b"a", "é".encode(), b"", b"x"]], dtype=object)
    out = model.infer({"x": words}, None)["y"]
    assert out.tolist() == words.tolist()  # bytes in, bytes out: never "b'a'"
    with pytest.raises(InvalidInput, match="not valid UTF-8"):
        model.infer({"x": np.array([[b"\xff", b"", b"", b""]], dtype=object)}, None)


def test_unloadable_file_names_the_problem(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=r"onnxruntime could not load model\.onnx"):
        OnnxRuntime().load(tmp_path, ModelConfig())
    with pytest.raises(ModelLoadError, match="not found"):
        OnnxRuntime().load(tmp_path, ModelConfig(default_model_filename="other.onnx"))
