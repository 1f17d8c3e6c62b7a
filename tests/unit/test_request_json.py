"""Infer-request JSON through simdjson: same documents, same numbers, same errors as orjson."""

from __future__ import annotations

import json
import threading

import numpy as np
import orjson
import pytest

from modelport.core.errors import InvalidInput
from modelport.frontends.rest import request_json
from modelport.frontends.rest.request_json import parse_request


def body(data: object, datatype: str = "FP32", shape: list[int] | None = None) -> bytes:
    shape = shape if shape is not None else [1, len(data)] if isinstance(data, list) else [1]
    item = {"name": "x", "datatype": datatype, "shape": shape, "data": data}
    return json.dumps({"id": "r", "inputs": [item], "parameters": {"a": [1, {"b": None}]}}).encode()


def test_float_data_becomes_the_same_numbers_orjson_and_numpy_give() -> None:
    values = np.random.default_rng(0).standard_normal(5000) * 10.0 ** np.arange(-20, 30, 0.01)
    text = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [5000],
                     "data": [*values.tolist()[:4990], 0, -1, 7, 1e-45, 3.4e38, -0.0, 1, 2, 3, 4]}]}
    ).encode()  # fmt: skip
    document = parse_request(text)
    data = document["inputs"][0]["data"]
    assert isinstance(data, np.ndarray) and data.dtype == np.float64
    expected = np.asarray(orjson.loads(text)["inputs"][0]["data"], dtype=np.float64)
    np.testing.assert_array_equal(data, expected)
    np.testing.assert_array_equal(data.astype(np.float32), expected.astype(np.float32))


def test_everything_but_float_data_is_plain_python() -> None:
    document = parse_request(body([1.5, 2.5]))
    assert document["id"] == "r"
    assert document["parameters"] == {"a": [1, {"b": None}]}
    item = document["inputs"][0]
    assert (item["name"], item["datatype"], item["shape"]) == ("x", "FP32", [1, 2])
    for datatype, data in (("INT64", [1, 2]), ("BOOL", [True, False]), ("BYTES", ["a", "b"])):
        assert parse_request(body(data, datatype))["inputs"][0]["data"] == data


@pytest.mark.parametrize(
    "data",
    [[[0.5, 0.5], [0.5]], [[1.0, 2.0]], [1.0, "a"], [1.0, None], [True, 1.0]],
    ids=["ragged", "nested", "string", "null", "bool"],
)
def test_nested_or_mixed_data_takes_the_plain_path(data: list) -> None:
    item = parse_request(body(data, shape=[1, 2]))["inputs"][0]
    assert item["data"] == data  # numpy then checks it as before


def test_documents_simdjson_refuses_go_to_orjson() -> None:
    huge = parse_request(body([2**64, 1], "UINT64"))  # beyond 64 bits: exact, via orjson
    assert huge["inputs"][0]["data"] == [2**64, 1]
    for bad, words in ((b'{"inputs": [', "malformed JSON"), (b"[1, 2]", "must be a JSON object"),
                       (b"\xff", "malformed JSON"), (b"", "malformed JSON")):  # fmt: skip
        with pytest.raises(InvalidInput, match=words):
            parse_request(bad)


def test_the_parser_is_reused_and_replaced_while_a_document_lives() -> None:
    kept = request_json._parse(b'{"a": [1, 2]}')  # a proxy still alive on this thread's parser
    assert parse_request(body([1.0, 2.0]))["inputs"][0]["data"].tolist() == [1.0, 2.0]
    del kept
    for _ in range(3):
        with pytest.raises(InvalidInput):
            parse_request(b'{"x": ')
        assert parse_request(body([3.0]))["inputs"][0]["data"].tolist() == [3.0]


def test_large_bodies_and_threads() -> None:
    big = body([0.25] * 300_000)  # > 1 MiB: a parser of its own
    assert len(big) > request_json.REUSED_PARSER_BYTES
    results: dict[int, float] = {}

    def work(index: int) -> None:
        for _ in range(20):
            data = parse_request(body([float(index)] * 100))["inputs"][0]["data"]
            results[index] = float(data.sum())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    assert parse_request(big)["inputs"][0]["data"].shape == (300_000,)
    for thread in threads:
        thread.join()
    assert results == {i: 100.0 * i for i in range(4)}
