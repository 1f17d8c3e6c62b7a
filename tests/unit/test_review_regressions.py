"""Inputs a review found to crash, corrupt or over-allocate; each must now be a clear 4xx."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from modelport.core.errors import InvalidInput, ModelNotFound, PayloadTooLarge
from modelport.core.manager import ModelRecord, _version_number
from modelport.core.types import DataType, TensorSpec
from modelport.core.validate import InputGuard, Limits
from modelport.frontends.compression import choose_encoding, decode_body
from modelport.frontends.raw_tensors import from_raw
from modelport.frontends.rest.v2_codec import decode_request


def test_bytes_count_is_checked_before_allocating() -> None:
    with pytest.raises(InvalidInput, match="cannot hold 67108864 BYTES elements"):
        from_raw("x", DataType.BYTES, (1, 1 << 26), memoryview(b""))


def test_raw_bool_bytes_must_be_zero_or_one() -> None:
    assert from_raw("x", DataType.BOOL, (2,), b"\x00\x01").tolist() == [False, True]
    with pytest.raises(InvalidInput, match="BOOL bytes must be 0 or 1"):
        from_raw("x", DataType.BOOL, (2,), b"\x00\x02")


@pytest.mark.parametrize("version", ["\u00b2", "\u0661", "01", "9" * 5000, "-1", "0", ""])
def test_odd_version_strings_are_not_found(version: str) -> None:
    with pytest.raises(ModelNotFound, match="positive integers"):
        _version_number(ModelRecord("m"), version)


def guard(max_batch: int = 8) -> InputGuard:
    spec = TensorSpec("x", DataType.FP32, (-1, -1))
    return InputGuard([spec], [spec], max_batch, Limits(max_tensor_elements=1000))


def test_a_zero_dimension_cannot_hide_a_huge_one() -> None:
    with pytest.raises(PayloadTooLarge, match="a dimension of shape"):
        guard(max_batch=0).check_header("x", "FP32", [0, 2**63 - 1])


def test_batch_of_zero_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"batch size .* is 0"):
        guard().check_header("x", "FP32", [0, 3])


def test_gzip_with_trailing_data_is_refused() -> None:
    with pytest.raises(InvalidInput, match="data after its end"):
        decode_body(gzip.compress(b"{}") + b"junk", "gzip", 1000)


def test_zero_quality_in_any_spelling_declines_an_encoding() -> None:
    assert choose_encoding("gzip;q=0.000") is None
    assert choose_encoding("gzip; q=0.5") == "gzip"


def body(**extra: object) -> bytes:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}
    return json.dumps({"inputs": [tensor], **extra}).encode()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"parameters": {"binary_data_output": "false"}}, "must be true or false"),
        ({"outputs": [{"name": "x", "parameters": {"binary_data": 1}}]}, "must be true or false"),
        ({"outputs": [{"name": "x", "parameters": {"classification": 3}}]}, "classification"),
    ],
)
def test_output_parameters_are_checked(extra: dict, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        decode_request(body(**extra), None, guard(), "m", None)


def test_json_binary_flags_still_work() -> None:
    request, fmt = decode_request(
        body(parameters={"binary_data_output": True}), None, guard(), "m", None
    )
    assert fmt.is_binary("x")
    np.testing.assert_array_equal(request.request.inputs["x"], [[1.0]])
