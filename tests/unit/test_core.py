from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from modelport.core.config import DEFAULT_MAX_BATCH_SIZE, ModelConfig, VersionPolicy
from modelport.core.errors import ConfigError, ErrorKind, InvalidInput, PayloadTooLarge
from modelport.core.runtime import Signature
from modelport.core.signature import resolve_signature
from modelport.core.types import DataType, TensorSpec
from modelport.core.validate import InputGuard, Limits
from modelport.frontends.status import STATUS, grpc_code_name, http_status


def test_every_error_kind_has_one_wire_status() -> None:
    assert set(STATUS) == set(ErrorKind)
    assert http_status(ErrorKind.NOT_FOUND) == 404
    assert http_status(ErrorKind.TOO_LARGE) == 413
    assert grpc_code_name(ErrorKind.INVALID_INPUT) == "INVALID_ARGUMENT"
    assert grpc_code_name(ErrorKind.UNAVAILABLE) == "UNAVAILABLE"


@pytest.mark.parametrize("datatype", list(DataType))
def test_datatypes_map_to_numpy_and_back(datatype: DataType) -> None:
    assert DataType.from_numpy(datatype.numpy_dtype) is datatype
    assert DataType.parse(datatype.value) is datatype


def test_unknown_datatype_names_the_choices() -> None:
    with pytest.raises(ValueError, match="expected one of BOOL"):
        DataType.parse("FP8")


@pytest.mark.parametrize(
    ("policy", "chosen"),
    [
        ({}, [5]),
        ({"latest": 2}, [3, 5]),
        ("all", [1, 3, 5]),
        ({"all": {}}, [1, 3, 5]),
        ({"specific": [1, 5, 9]}, [1, 5]),
    ],
)
def test_version_policy_selects(policy: object, chosen: list[int]) -> None:
    assert VersionPolicy.model_validate(policy).select([5, 1, 3]) == chosen


def test_version_policy_takes_one_kind() -> None:
    with pytest.raises(ValidationError, match="one of latest, all, specific"):
        VersionPolicy.model_validate({"latest": 1, "specific": [1]})


def test_config_refuses_unknown_keys_and_path_like_filenames() -> None:
    with pytest.raises(ValidationError, match="max_batch_sise"):
        ModelConfig.model_validate({"max_batch_sise": 3})
    with pytest.raises(ValidationError, match="file name, not a path"):
        ModelConfig.model_validate({"default_model_filename": "../../etc/passwd"})
    with pytest.raises(ValidationError, match="duplicate input"):
        ModelConfig.model_validate(
            {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1]}] * 2}
        )


SIG = Signature(
    inputs=(TensorSpec("x", DataType.FP32, (-1, -1)),),
    outputs=(TensorSpec("y", DataType.FP32, (-1, 3)),),
)


def test_signature_defaults_to_batching_on_a_dynamic_first_dim() -> None:
    resolved = resolve_signature(SIG, ModelConfig())
    assert resolved.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    fixed = Signature((TensorSpec("x", DataType.FP32, (2, 3)),), SIG.outputs)
    assert resolve_signature(fixed, ModelConfig()).max_batch_size == 0


def test_config_refines_a_dynamic_dimension() -> None:
    config = ModelConfig.model_validate(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}], "max_batch_size": 16}
    )
    resolved = resolve_signature(SIG, config)
    assert resolved.inputs[0].shape == (-1, 8)
    assert resolved.max_batch_size == 16


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"inputs": [{"name": "z", "datatype": "FP32", "shape": [-1]}]}, "does not have"),
        ({"inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, -1]}]}, "FP64"),
        ({"outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]}, "contradicts"),
    ],
)
def test_config_contradicting_the_model_is_refused(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_signature(SIG, ModelConfig.model_validate(config))


def make_guard(max_batch: int = 4, elements: int = 100) -> InputGuard:
    inputs = [TensorSpec("a", DataType.FP32, (-1, 2)), TensorSpec("b", DataType.INT64, (-1, 2))]
    return InputGuard(
        inputs,
        [TensorSpec("y", DataType.FP32, (-1,))],
        max_batch,
        Limits(max_tensor_elements=elements),
    )


def test_guard_checks_headers_before_data() -> None:
    guard = make_guard()
    assert guard.check_header("a", "FP32", [3, 2]).name == "a"
    with pytest.raises(InvalidInput, match="max_batch_size 4"):
        guard.check_header("a", "FP32", [5, 2])
    with pytest.raises(InvalidInput, match="non-negative integers"):
        guard.check_header("a", "FP32", [1, 2.0])
    with pytest.raises(InvalidInput, match="non-negative integers"):
        guard.check_header("a", "FP32", [True, 2])
    with pytest.raises(PayloadTooLarge, match="more than the limit of 100"):
        make_guard(max_batch=0, elements=100).check_header("a", "FP32", [51, 2])


def test_guard_checks_decoded_arrays() -> None:
    guard = make_guard()
    a = np.zeros((2, 2), np.float32)
    guard.check_arrays({"a": a, "b": np.zeros((2, 2), np.int64)})
    with pytest.raises(InvalidInput, match="disagree on the batch size"):
        guard.check_arrays({"a": a, "b": np.zeros((3, 2), np.int64)})
    with pytest.raises(InvalidInput, match="missing input"):
        guard.check_arrays({"a": a})
    with pytest.raises(InvalidInput, match="datatype 'FP64'"):
        guard.check_arrays({"a": a.astype(np.float64), "b": np.zeros((2, 2), np.int64)})
