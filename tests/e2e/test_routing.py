"""Version labels and traffic splitting, over HTTP and gRPC, with per-version metrics."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from modelport.examples import onnx_models
from tests.support import Server, add_model, run_server

CONFIG = """\
version_policy: all
labels: {stable: 1, canary: 2}
traffic: {1: 90, 2: 10}
"""
ROW = [[0.0, 1.0, 2.0, 3.0]]


@pytest.fixture(scope="module")
def split_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("split")
    add_model(repo, "split", onnx_models.offset(1.0), version=1)
    add_model(repo, "split", onnx_models.offset(2.0), version=2, config=CONFIG)
    add_model(repo, "split", onnx_models.offset(3.0), version=3)
    with run_server(repo, tmp_path_factory.mktemp("logs") / "server.log") as server:
        yield server


def infer(client: httpx.Client, path: str) -> dict[str, object]:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
    reply = client.post(path, json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_requests_by_label(split_server: Server) -> None:
    with httpx.Client(base_url=split_server.base) as client:
        for label, version in (("stable", "1"), ("canary", "2"), ("3", "3")):
            answer = infer(client, f"/v2/models/split/versions/{label}/infer")
            assert answer["model_version"] == version
            assert answer["outputs"][0]["data"] == [x + int(version) for x in ROW[0]]
        reply = client.get("/v2/models/split/versions/nightly")
        assert reply.status_code == 404
        assert "labels: canary, stable" in reply.json()["error"]
    grpc = grpcclient.InferenceServerClient(split_server.grpc_url)
    x = grpcclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.array(ROW, dtype=np.float32))
    assert grpc.infer("split", [x], model_version="canary").get_response().model_version == "2"


def test_traffic_split_over_1000_requests(split_server: Server) -> None:
    counts: Counter[str] = Counter()
    with httpx.Client(base_url=split_server.base) as client:
        for _ in range(1000):
            counts[infer(client, "/v2/models/split/infer")["model_version"]] += 1
    # version 3 is ready but has no share; 10 % +- 4.5 standard deviations goes to the canary
    assert set(counts) == {"1", "2"}
    assert 57 <= counts["2"] <= 143, counts
    metrics = httpx.get(f"{split_server.base}/metrics").text
    per_version = {
        version: float(value)
        for version, value in re.findall(
            r'modelport_inference_request_success_total\{model="split",version="(\d)"\} (\S+)',
            metrics,
        )
    }
    assert per_version["2"] >= counts["2"] and per_version["1"] >= counts["1"]


def test_index_shows_labels_and_traffic(split_server: Server) -> None:
    rows = httpx.post(f"{split_server.base}/v2/repository/index").json()
    by_version = {row["version"]: row for row in rows}
    assert by_version["1"]["labels"] == ["stable"] and by_version["1"]["traffic"] == 90
    assert by_version["2"]["labels"] == ["canary"] and by_version["2"]["traffic"] == 10
    assert "labels" not in by_version["3"] and "traffic" not in by_version["3"]
