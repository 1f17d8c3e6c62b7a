from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelport.core.errors import InvalidInput
from modelport.core.types import DataType, InferResponse, TensorSpec
from modelport.core.validate import InputGuard, Limits
from modelport.frontends.rest.v2_codec import (
    OutputFormat,
    decode_request,
    encode_response,
    parse_header_length,
)

NUMERIC = [t for t in DataType if t is not DataType.BYTES]


def guard_for(datatype: DataType, shape: tuple[int, ...] = (-1, -1)) -> InputGuard:
    spec = TensorSpec("x", datatype, shape)
    return InputGuard([spec], [TensorSpec("y", datatype, shape)], 1024, Limits())


def binary_request(datatype: DataType, array: np.ndarray, blob: bytes) -> tuple[bytes, int]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": datatype.value,
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + blob, len(header)


def split_response(body: bytes, header_length: int | None) -> tuple[dict, bytes]:
    if header_length is None:
        return json.loads(body), b""
    return json.loads(body[:header_length]), body[header_length:]


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(NUMERIC).flatmap(
        lambda dt: st.tuples(
            st.just(dt),
            hnp.arrays(dt.numpy_dtype, hnp.array_shapes(min_dims=2, max_dims=2, max_side=5)),
        )
    )
)
def test_binary_numeric_round_trip(case: tuple[DataType, np.ndarray]) -> None:
    datatype, array = case
    body, length = binary_request(datatype, array, array.tobytes())
    request, output_format = decode_request(body, length, guard_for(datatype), "m", None)
    decoded = request.request.inputs["x"]
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)
    out, out_length = encode_response(InferResponse("m", "1", {"y": decoded}), output_format)
    header, blob = split_response(out, out_length)
    assert header["outputs"][0]["parameters"]["binary_data_size"] == len(blob)
    np.testing.assert_array_equal(
        np.frombuffer(blob, dtype=array.dtype).reshape(array.shape), array
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=20), min_size=1, max_size=6))
def test_binary_bytes_round_trip(items: list[bytes]) -> None:
    array = np.empty((1, len(items)), dtype=object)
    array[0, :] = items
    blob = b"".join(struct.pack("<I", len(item)) + item for item in items)
    body, length = binary_request(DataType.BYTES, array, blob)
    request, output_format = decode_request(body, length, guard_for(DataType.BYTES), "m", None)
    assert list(request.request.inputs["x"].reshape(-1)) == items
    out, out_length = encode_response(
        InferResponse("m", "1", {"y": request.request.inputs["x"]}), output_format
    )
    assert split_response(out, out_length)[1] == blob


def test_json_floats_nested_or_flat_and_json_output() -> None:
    guard = guard_for(DataType.FP32)
    for data in ([[1, 2.5], [3, 4]], [1, 2.5, 3, 4]):
        body = json.dumps(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": data}]}
        ).encode()
        request, output_format = decode_request(body, None, guard, "m", "3")
        assert request.request.model_version == "3"
        np.testing.assert_array_equal(request.request.inputs["x"], [[1, 2.5], [3, 4]])
        out, length = encode_response(
            InferResponse("m", "3", {"y": request.request.inputs["x"]}, id="a"), output_format
        )
        assert length is None
        assert json.loads(out) == {
            "model_name": "m",
            "model_version": "3",
            "id": "a",
            "outputs": [
                {"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [1.0, 2.5, 3.0, 4.0]}
            ],
        }


def test_request_level_binary_output_and_per_output_override() -> None:
    fmt = OutputFormat(binary_default=True, binary={"b": False})
    arrays = {"a": np.arange(3, dtype=np.int64), "b": np.arange(2, dtype=np.int64)}
    out, length = encode_response(InferResponse("m", "1", arrays), fmt)
    header, blob = split_response(out, length)
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 24}
    assert header["outputs"][1]["data"] == [0, 1]
    assert np.frombuffer(blob, dtype=np.int64).tolist() == [0, 1, 2]


def test_binary_input_is_a_view_of_the_body_not_a_copy() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, length = binary_request(DataType.FP32, array, array.tobytes())
    request, _ = decode_request(body, length, guard_for(DataType.FP32), "m", None)
    assert not request.request.inputs["x"].flags.owndata


@pytest.mark.parametrize(
    ("value", "message"),
    [("x", "not an integer"), ("-1", "outside the body"), ("999", "outside the body")],
)
def test_header_length_checks(value: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_header_length(value, 10)


def test_bytes_output_that_is_not_utf8_asks_for_binary() -> None:
    arrays = {"y": np.array([b"\xff"], dtype=object)}
    with pytest.raises(InvalidInput, match="binary_data: true"):
        encode_response(InferResponse("m", "1", arrays), OutputFormat())


@pytest.mark.parametrize(
    ("data", "ok"),
    [
        ([1, 2], True),
        ([2**63, 0], True),
        ([2**64, 0], False),
        ([-1, 0], False),
        ([1.0, 2.0], True),
        ([1.5, 2], False),
        ([True, False], False),
    ],
)
def test_json_uint64_values_are_exact(data: list, ok: bool) -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "UINT64", "shape": [1, 2], "data": data}]}
    ).encode()
    guard = guard_for(DataType.UINT64)
    if ok:
        request, _ = decode_request(body, None, guard, "m", None)
        assert request.request.inputs["x"].reshape(-1).tolist() == [int(v) for v in data]
    else:
        with pytest.raises(InvalidInput, match="integers in range"):
            decode_request(body, None, guard, "m", None)


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/v2/models/mlp/infer", ("mlp", None)),
        ("/v2/models/mlp/versions/3/infer", ("mlp", "3")),
        ("/v2/models/mlp/versions/canary/infer", ("mlp", "canary")),
        ("/v2/models//infer", None),
        ("/v2/models/mlp/versions//infer", None),
        ("/v2/models/mlp/infer/", None),
        ("/v1/models/mlp/infer", None),
        ("/v2/models/mlp/ready", None),
        ("/v2/models/mlp/versions/3/ready", None),
        ("/v2/repository/models/mlp/infer", None),
        # no leading slash: the access guard classifies it as no route, so neither is it one
        ("x/v2/models/mlp/infer", None),
    ],
)
def test_infer_paths_are_recognised_like_the_route_table_would(
    path: str, target: tuple[str, str | None] | None
) -> None:
    from modelport.frontends.rest.infer_route import infer_target

    assert infer_target(path) == target
