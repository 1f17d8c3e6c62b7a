"""Access lines and request ids from real servers: `--log-format json` with API keys (REST v2,
TF Serving, gRPC unary and streaming, refusals), the default text format, and
`--no-access-log`. Each request carries its own x-request-id, so its line is found by it: one
line per request, with the key's name and never the key."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from modelport.examples import onnx_models
from modelport.security.keys import KeyEntry, generate_key, key_digest, write_key_file
from tests.support import Server, add_model, run_server, wait_until

ADD_SUB_BODY = {
    "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [2.0] * 16},
    ]
}


@dataclass
class Logged:
    server: Server
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}

    def records(self) -> list[dict[str, Any]]:
        """Every line of the server's log: each must be one JSON object."""
        return [json.loads(line) for line in self.server.log_text().splitlines() if line]

    def access(self, request_id: str) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records()
            if r["logger"] == "modelport.access" and r.get("request_id") == request_id
        ]

    def line_for(self, request_id: str) -> dict[str, Any]:
        """The one access line of a request (waiting for it: it is written as it ends)."""
        wait_until(lambda: bool(self.access(request_id)), f"the access line of {request_id}")
        (line,) = self.access(request_id)
        return line


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("logged")
    add_model(root, "add_sub", onnx_models.add_sub("FP32", 16))
    return root


@pytest.fixture(scope="module")
def logged(repo: Path) -> Iterator[Logged]:
    key = generate_key()
    entry = KeyEntry.model_validate(
        {"name": "pipeline-bot", "sha256": key_digest(key), "scopes": ["inference"]}
    )
    key_file = repo.parent / "keys.yaml"
    write_key_file(key_file, [entry])
    log = repo.parent / "json-server.log"
    with run_server(repo, log, "--log-format", "json", "--api-keys", str(key_file)) as server:
        yield Logged(server, key)
    text = log.read_text()
    assert key not in text and key_digest(key) not in text
    assert "Traceback" not in text, text


def grpc_inputs() -> list[triton_grpc.InferInput]:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = triton_grpc.InferInput(name, [1, 16], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
        inputs.append(tensor)
    return inputs


def test_every_log_line_is_json_uvicorns_and_ours(logged: Logged) -> None:
    records = logged.records()
    assert records, "the server logged nothing"
    assert {"time", "level", "logger", "message"} <= set(records[0])
    loggers = {record["logger"] for record in records}
    assert "modelport" in loggers and any(name.startswith("uvicorn") for name in loggers)


def test_a_rest_infer_request_has_one_line_with_the_key_name_not_the_key(logged: Logged) -> None:
    headers = {**logged.auth, "x-request-id": "rest-infer-1"}
    url = f"{logged.server.base}/v2/models/add_sub/infer"
    answer = httpx.post(url, json=ADD_SUB_BODY, headers=headers)
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "rest-infer-1"
    line = logged.line_for("rest-infer-1")
    assert line["protocol"] == "rest" and line["method"] == "POST"
    assert line["path"] == "/v2/models/add_sub/infer"
    assert (line["model"], line["version"], line["status"]) == ("add_sub", "1", 200)
    assert line["key"] == "pipeline-bot" and line["client"] == "127.0.0.1"
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0
    assert "trace_id" not in line  # not traced: tracing is off
    assert logged.key not in json.dumps(line)


def test_a_request_id_is_made_when_none_comes_and_a_bad_one_is_replaced(logged: Logged) -> None:
    url = f"{logged.server.base}/v2/models/add_sub"
    made = httpx.get(url, headers=logged.auth).headers["x-request-id"]
    assert len(made) == 16 and int(made, 16) >= 0
    line = logged.line_for(made)
    assert (line["path"], line["status"], line["model"]) == ("/v2/models/add_sub", 200, "add_sub")
    replaced = httpx.get(url, headers={**logged.auth, "x-request-id": "x" * 500})
    assert len(replaced.headers["x-request-id"]) == 16
    logged.line_for(replaced.headers["x-request-id"])


def test_refused_and_tf_serving_requests_are_logged_too(logged: Logged) -> None:
    url = f"{logged.server.base}/v2/models/add_sub/infer"
    refused = httpx.post(url, json=ADD_SUB_BODY, headers={"x-request-id": "no-key-1"})
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "no-key-1"
    line = logged.line_for("no-key-1")
    assert (line["status"], line["model"]) == (401, "add_sub")
    assert "key" not in line

    body = {"instances": [{"INPUT0": [1.0] * 16, "INPUT1": [1.0] * 16}]}
    headers = {**logged.auth, "x-request-id": "tfs-1"}
    predict = httpx.post(
        f"{logged.server.base}/v1/models/add_sub:predict", json=body, headers=headers
    )
    assert predict.status_code == 200
    line = logged.line_for("tfs-1")
    assert (line["protocol"], line["model"], line["status"]) == ("tfserving", "add_sub", 200)
    assert line["key"] == "pipeline-bot"


def test_a_grpc_call_has_one_line_and_gets_its_request_id_back(logged: Logged) -> None:
    with grpc.insecure_channel(logged.server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = [("authorization", f"Bearer {logged.key}"), ("x-request-id", "grpc-meta-1")]
        request = service_pb2.ModelMetadataRequest(name="add_sub")
        _, call = stub.ModelMetadata.with_call(request, metadata=metadata)
        assert ("x-request-id", "grpc-meta-1") in call.initial_metadata()
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelMetadata(request, metadata=[("x-request-id", "grpc-refused-1")])
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    line = logged.line_for("grpc-meta-1")
    assert line["protocol"] == "grpc" and line["method"] == "ModelMetadata"
    assert line["path"] == "/inference.GRPCInferenceService/ModelMetadata"
    assert (line["model"], line["status"], line["key"]) == ("add_sub", 0, "pipeline-bot")
    assert logged.line_for("grpc-refused-1")["status"] == 16  # UNAUTHENTICATED

    client = triton_grpc.InferenceServerClient(logged.server.grpc_url)
    try:
        headers = {**logged.auth, "x-request-id": "grpc-infer-1"}
        client.infer("add_sub", grpc_inputs(), headers=headers)
    finally:
        client.close()
    line = logged.line_for("grpc-infer-1")
    assert (line["method"], line["model"], line["version"]) == ("ModelInfer", "add_sub", "1")


def test_a_grpc_stream_has_one_line_counting_its_requests(logged: Logged) -> None:
    client = triton_grpc.InferenceServerClient(logged.server.grpc_url)
    replies: queue.Queue[Any] = queue.Queue()
    headers = {**logged.auth, "x-request-id": "stream-1"}
    client.start_stream(
        callback=lambda result, error: replies.put((result, error)), headers=headers
    )
    try:
        for index in range(3):
            client.async_stream_infer("add_sub", grpc_inputs(), request_id=str(index))
        assert all(replies.get(timeout=30)[1] is None for _ in range(3))
    finally:
        client.stop_stream()
    line = logged.line_for("stream-1")
    assert line["method"] == "ModelStreamInfer" and line["messages"] == 3
    assert (line["model"], line["version"], line["status"]) == ("add_sub", "1", 0)


def test_the_default_text_format_has_one_access_line_per_request(server: Server) -> None:
    url = f"{server.base}/v2/models/add_sub/infer"
    answer = httpx.post(url, json=ADD_SUB_BODY, headers={"x-request-id": "text-1"})
    assert answer.status_code == 200

    def lines() -> list[str]:
        return [line for line in server.log_text().splitlines() if "request_id=text-1" in line]

    wait_until(lambda: bool(lines()), "the text access line")
    (line,) = lines()
    assert "modelport.access: rest POST /v2/models/add_sub/infer 200 " in line
    assert "model=add_sub version=1 client=127.0.0.1 request_id=text-1" in line


def test_no_access_log_writes_none(repo: Path) -> None:
    log = repo.parent / "quiet-server.log"
    with run_server(repo, log, "--no-access-log") as server:
        url = f"{server.base}/v2/models/add_sub/infer"
        answer = httpx.post(url, json=ADD_SUB_BODY, headers={"x-request-id": "quiet-1"})
        assert answer.status_code == 200 and answer.headers["x-request-id"] == "quiet-1"
        with grpc.insecure_channel(server.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            stub.ServerLive(service_pb2.ServerLiveRequest(), metadata=[("x-request-id", "q-2")])
    text = log.read_text()
    assert "modelport.access" not in text and "quiet-1" not in text and "q-2" not in text


def test_uvicorns_coloured_copies_stay_out_of_json(logged: Logged) -> None:
    uvicorn = [r for r in logged.records() if r["logger"].startswith("uvicorn")]
    assert uvicorn and not any("color_message" in record for record in uvicorn)
