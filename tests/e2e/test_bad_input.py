"""Each malformed request gets a v2 error body naming the problem; the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelport.examples import onnx_models
from tests.support import Server, add_model, run_server, standard_repository

pytestmark = pytest.mark.e2e

GOOD_INPUT = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}
LIMIT_BYTES = 200_000
LIMIT_ELEMENTS = 10_000


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with small limits so the limit checks are cheap to reach."""
    repo = standard_repository(tmp_path_factory.mktemp("bad"))
    add_model(repo, "broken", b"this is not an onnx file")
    add_model(repo, "add_int8", onnx_models.add_sub("INT8", 4))
    add_model(repo, "id_dynamic", onnx_models.identity("FP32", ("N", "M")))
    log = repo.parent / "limited.log"
    args = ("--max-request-size", str(LIMIT_BYTES), "--max-tensor-elements", str(LIMIT_ELEMENTS))
    with run_server(repo, log, *args) as server:
        yield server


def infer_body(*inputs: dict, **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def binary_body(header: dict, payload: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + payload, {"Inference-Header-Content-Length": str(len(head))}


FLOATS_64 = np.zeros(64, dtype=np.float32).tobytes()

# (case id, path, body, extra headers, expected status, words the error must contain)
CASES = [
    ("unknown model", "/v2/models/nope/infer", infer_body(GOOD_INPUT), {}, 404, "unknown model"),
    (
        "unknown version",
        "/v2/models/mlp/versions/7/infer",
        infer_body(GOOD_INPUT),
        {},
        404,
        "unknown version '7'",
    ),
    (
        "non-numeric version",
        "/v2/models/mlp/versions/x/infer",
        infer_body(GOOD_INPUT),
        {},
        404,
        "positive integers",
    ),
    ("malformed JSON", "/v2/models/mlp/infer", b'{"inputs": [', {}, 400, "malformed JSON"),
    ("not an object", "/v2/models/mlp/infer", b"[1, 2]", {}, 400, "JSON object"),
    ("no inputs", "/v2/models/mlp/infer", b'{"inputs": []}', {}, 400, "'inputs'"),
    (
        "wrong input name",
        "/v2/models/mlp/infer",
        infer_body({**GOOD_INPUT, "name": "x"}),
        {},
        400,
        "unexpected input 'x'",
    ),
    (
        "missing input",
        "/v2/models/add_sub/infer",
        infer_body({"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [0] * 16}),
        {},
        400,
        "missing input(s): INPUT1",
    ),
    (
        "duplicate input",
        "/v2/models/mlp/infer",
        infer_body(GOOD_INPUT, GOOD_INPUT),
        {},
        400,
        "more than once",
    ),
    (
        "wrong datatype",
        "/v2/models/mlp/infer",
        infer_body({**GOOD_INPUT, "datatype": "INT32"}),
        {},
        400,
        "datatype 'INT32'",
    ),
    (
        "unknown datatype",
        "/v2/models/mlp/infer",
        infer_body({**GOOD_INPUT, "datatype": "FP8"}),
        {},
        400,
        "datatype 'FP8'",
    ),
    (
        "wrong shape",
        "/v2/models/mlp/infer",
        infer_body({**GOOD_INPUT, "shape": [1, 63]}),
        {},
        400,
        "shape [1, 63] does not match the model's [-1, 64]",
    ),
    (
        "wrong rank",
        "/v2/models/mlp/infer",
        infer_body({**GOOD_INPUT, "shape": [64]}),
        {},
        400,
        "does not match",
    ),
    (
        "negative dimension",
        "/v2/models/mlp/infer",
        infer_body({**GOOD_INPUT, "shape": [-1, 64]}),
        {},
        400,
        "non-negative integers",
    ),
    (
        "shape not a list",
        "/v2/models/mlp/infer",
        infer_body({**GOOD_INPUT, "shape": "1,64"}),
        {},
        400,
        "shape must be a list",
    ),
    (
        "data too short",
        "/v2/models/mlp/infer",
        infer_body({**GOOD_INPUT, "data": [0.5] * 63}),
        {},
        400,
        "holds 63 elements but shape [1, 64] needs 64",
    ),
    (
        "data ragged",
        "/v2/models/mlp/infer",
        infer_body({**GOOD_INPUT, "data": [[0.5] * 32, [0.5] * 31]}),
        {},
        400,
        "ragged",
    ),
    (
        "data not numbers",
        "/v2/models/mlp/infer",
        infer_body({**GOOD_INPUT, "data": ["a"] * 64}),
        {},
        400,
        "must hold numbers",
    ),
    (
        "no data",
        "/v2/models/mlp/infer",
        infer_body({"name": "input", "datatype": "FP32", "shape": [1, 64]}),
        {},
        400,
        "neither 'data' nor binary_data_size",
    ),
    (
        "unknown output",
        "/v2/models/mlp/infer",
        infer_body(GOOD_INPUT, outputs=[{"name": "logits"}]),
        {},
        400,
        "unknown output 'logits'",
    ),
    (
        "batch above max_batch_size",
        "/v2/models/mlp/infer",
        infer_body({**GOOD_INPUT, "shape": [1025, 64], "data": []}),
        {},
        400,
        "batch size 1025 exceeds the model's max_batch_size 1024",
    ),
    (
        "too many elements (no allocation)",
        "/v2/models/mlp/infer",
        infer_body({**GOOD_INPUT, "shape": [1000, 64], "data": [1]}),
        {},
        413,
        "more than the limit of 10000",
    ),
    (
        "astronomical shape",
        "/v2/models/id_dynamic/infer",
        infer_body({"name": "x", "datatype": "FP32", "shape": [1, 10**15], "data": [1]}),
        {},
        413,
        "has 1000000000000000 elements, more than the limit",
    ),
    (
        "header length past the body",
        "/v2/models/mlp/infer",
        b'{"inputs": []}',
        {"Inference-Header-Content-Length": "999"},
        400,
        "outside the body",
    ),
    (
        "header length not a number",
        "/v2/models/mlp/infer",
        b'{"inputs": []}',
        {"Inference-Header-Content-Length": "ten"},
        400,
        "not an integer",
    ),
    (
        "binary size past the end",
        "/v2/models/mlp/infer",
        *binary_body(
            {"inputs": [{**GOOD_INPUT, "data": None, "parameters": {"binary_data_size": 4096}}]},
            FLOATS_64,
        ),
        400,
        "runs past the end of the body",
    ),
    (
        "binary size wrong for shape",
        "/v2/models/mlp/infer",
        *binary_body(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [1, 64],
                        "parameters": {"binary_data_size": 128},
                    }
                ]
            },
            FLOATS_64[:128],
        ),
        400,
        "needs 256",
    ),
    (
        "binary bytes left over",
        "/v2/models/mlp/infer",
        *binary_body(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [1, 64],
                        "parameters": {"binary_data_size": 256},
                    }
                ]
            },
            FLOATS_64 + b"xx",
        ),
        400,
        "declare 256",
    ),
    (
        "BYTES length prefix past the end",
        "/v2/models/text_lower/infer",
        *binary_body(
            {
                "inputs": [
                    {
                        "name": "text",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            (1000).to_bytes(4, "little") + b"abcd",
        ),
        400,
        "past the end",
    ),
    (
        "BYTES not UTF-8 for an ONNX string",
        "/v2/models/text_lower/infer",
        *binary_body(
            {
                "inputs": [
                    {
                        "name": "text",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": 6},
                    }
                ]
            },
            (2).to_bytes(4, "little") + b"\xff\xfe",
        ),
        400,
        "not valid UTF-8",
    ),
    (
        "failed model",
        "/v2/models/broken/infer",
        infer_body(GOOD_INPUT),
        {},
        503,
        "onnxruntime could not load",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_request_is_refused_and_server_keeps_serving(
    limited_server: Server, path: str, body: bytes, headers: dict, status: int, words: str
) -> None:
    with httpx.Client(base_url=limited_server.base) as client:
        reply = client.post(path, content=body, headers=headers)
        assert reply.status_code == status, reply.text
        assert words in reply.json()["error"]
        good = client.post("/v2/models/mlp/infer", content=infer_body(GOOD_INPUT))
        assert good.status_code == 200, good.text
        assert len(good.json()["outputs"][0]["data"]) == 10
    assert limited_server.alive()


def test_body_over_the_size_limit_gets_413(limited_server: Server) -> None:
    with httpx.Client(base_url=limited_server.base) as client:
        reply = client.post("/v2/models/mlp/infer", content=b" " * (LIMIT_BYTES + 1))
        assert reply.status_code == 413
        assert "exceeds the limit" in reply.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
            for _ in range(LIMIT_BYTES // 1000 + 2):
                yield b" " * 1000

        reply = client.post("/v2/models/mlp/infer", content=chunks())
        assert reply.status_code == 413
        assert (
            client.post("/v2/models/mlp/infer", content=infer_body(GOOD_INPUT)).status_code == 200
        )


def test_integer_values_are_never_wrapped_or_truncated(limited_server: Server) -> None:
    def send(data: list) -> httpx.Response:
        tensors = [
            {"name": name, "datatype": "INT8", "shape": [1, 4], "data": data}
            for name in ("INPUT0", "INPUT1")
        ]
        return httpx.post(
            f"{limited_server.base}/v2/models/add_int8/infer", content=infer_body(*tensors)
        )

    for data in ([300] * 4, [-129] * 4, [1.5] * 4, [True] * 4, ["1"] * 4, [None] * 4):
        reply = send(data)
        assert reply.status_code == 400, (data, reply.text)
        assert "INT8 data must hold integers in range" in reply.json()["error"]
    reply = send([100, -100, 7, 0])
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == [-56, 56, 14, 0]  # INT8 addition wraps in ONNX


def test_unknown_route_answers_json(limited_server: Server) -> None:
    reply = httpx.get(f"{limited_server.base}/v2/nothing/here")
    assert reply.status_code == 404
    assert "error" in reply.json()
    reply = httpx.get(f"{limited_server.base}/v2/models/mlp/versions/1/infer")
    assert (reply.status_code, reply.headers["allow"]) == (405, "POST")
    assert reply.json() == {"error": "Method Not Allowed: GET /v2/models/mlp/versions/1/infer"}


def test_failed_model_is_reported_and_others_serve(limited_server: Server) -> None:
    with httpx.Client(base_url=limited_server.base) as client:
        index = client.post("/v2/repository/index").json()
        broken = next(row for row in index if row["name"] == "broken")
        assert broken["state"] == "FAILED"
        assert "onnxruntime could not load model.onnx" in broken["reason"]
        assert client.get("/v2/models/broken/ready").status_code == 400
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2/models/mlp/ready").status_code == 200
    assert "model broken version 1 failed to load" in limited_server.log_text()


def test_path_traversal_names_are_not_found(limited_server: Server, tmp_path: Path) -> None:
    with httpx.Client(base_url=limited_server.base) as client:
        for name in ("..", "%2e%2e", "..%2fetc"):
            reply = client.get(f"/v2/models/{name}/config")
            assert reply.status_code == 404, (name, reply.text)
