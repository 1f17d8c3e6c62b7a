"""Coming from TF Serving or Triton: TF Serving's REST API, and a Triton repository with
config.pbtxt, served unchanged; answers compared with onnxruntime run in-process."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from modelport.examples import onnx_models
from tests.support import Server, add_model, run_server

MLP = onnx_models.mlp((8, 16, 3), seed=4)
ADD_SUB = onnx_models.add_sub("FP32", 4)

TRITON_CONFIG = """
# a Triton repository's model, as Triton's docs write them
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0"  data_type: TYPE_FP32  dims: [ 4 ] },
  { name: "INPUT1"  data_type: TYPE_FP32  dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
version_policy: { specific: { versions: [ 1, 3 ] } }
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 200
}
instance_group [ { count: 2  kind: KIND_CPU } ]
model_warmup []
"""


@pytest.fixture(scope="module")
def compat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("compat")
    add_model(repo, "mlp", MLP, config="labels: {stable: 1}\n")
    add_model(repo, "add_sub", ADD_SUB)
    add_model(repo, "text_lower", onnx_models.text_lower())
    for version in (1, 2, 3):
        add_model(repo, "simple", ADD_SUB, version=version)
    (repo / "simple" / "config.pbtxt").write_text(TRITON_CONFIG)
    with run_server(repo, tmp_path_factory.mktemp("logs") / "server.log") as server:
        yield server


def run_in_process(model: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    return session.run(None, feeds)


def test_tf_serving_predict_row_and_columnar(compat_server: Server) -> None:
    rows = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    (expected,) = run_in_process(MLP, {"input": rows})
    with httpx.Client(base_url=compat_server.base) as client:
        reply = client.post("/v1/models/mlp:predict", json={"instances": rows.tolist()})
        assert reply.status_code == 200, reply.text
        assert np.allclose(reply.json()["predictions"], expected, atol=1e-5)
        reply = client.post("/v1/models/mlp/versions/1:predict", json={"inputs": rows.tolist()})
        assert np.allclose(reply.json()["outputs"], expected, atol=1e-5)
        reply = client.post("/v1/models/mlp/labels/stable:predict", json={"inputs": rows.tolist()})
        assert np.allclose(reply.json()["outputs"], expected, atol=1e-5)


def test_tf_serving_predict_with_several_inputs_and_outputs(compat_server: Server) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), dtype=np.float32)
    total, difference = run_in_process(ADD_SUB, {"INPUT0": a, "INPUT1": b})
    instances = [{"INPUT0": a[i].tolist(), "INPUT1": b[i].tolist()} for i in range(2)]
    with httpx.Client(base_url=compat_server.base) as client:
        predictions = client.post(
            "/v1/models/add_sub:predict", json={"instances": instances}
        ).json()["predictions"]
        assert [p["OUTPUT0"] for p in predictions] == total.tolist()
        assert [p["OUTPUT1"] for p in predictions] == difference.tolist()
        columns = {"INPUT0": a.tolist(), "INPUT1": b.tolist()}
        outputs = client.post("/v1/models/add_sub:predict", json={"inputs": columns}).json()
        assert outputs["outputs"] == {"OUTPUT0": total.tolist(), "OUTPUT1": difference.tolist()}


def test_tf_serving_binary_strings(compat_server: Server) -> None:
    payload = {"instances": ["HeLLo", {"b64": base64.b64encode("ÄBC".encode()).decode()}]}
    reply = httpx.post(f"{compat_server.base}/v1/models/text_lower:predict", json=payload)
    assert reply.status_code == 200, reply.text
    assert reply.json()["predictions"] == ["hello", "äbc"]


def test_tf_serving_status_and_metadata(compat_server: Server) -> None:
    with httpx.Client(base_url=compat_server.base) as client:
        status = client.get("/v1/models/mlp").json()
        assert status == {
            "model_version_status": [
                {
                    "version": "1",
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }
        assert client.get("/v1/models/mlp/labels/stable").json() == status
        metadata = client.get("/v1/models/mlp/versions/1/metadata").json()
        signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert signature["inputs"]["input"]["dtype"] == "DT_FLOAT"
        assert signature["inputs"]["input"]["tensor_shape"]["dim"] == [
            {"size": "-1"},
            {"size": "8"},
        ]
        assert metadata["model_spec"] == {"name": "mlp", "signature_name": "", "version": "1"}


def test_tf_serving_errors(compat_server: Server) -> None:
    with httpx.Client(base_url=compat_server.base) as client:
        cases = [
            ("/v1/models/nope:predict", {"instances": [[1]]}, 404, "unknown model"),
            ("/v1/models/mlp:predict", {"instances": [[1, 2], [1]]}, 400, "regular nested list"),
            ("/v1/models/mlp:predict", {"instances": [[1.0] * 7]}, 400, "shape"),
            ("/v1/models/mlp:predict", {}, 400, "exactly one of 'instances' or 'inputs'"),
            ("/v1/models/mlp:predict", {"instances": []}, 400, "non-empty list"),
            (
                "/v1/models/mlp:predict",
                {"instances": [[1] * 8], "signature_name": "x"},
                400,
                "signature",
            ),
            (
                "/v1/models/add_sub:predict",
                {"instances": [{"INPUT0": [1] * 4}]},
                400,
                "lacks input 'INPUT1'",
            ),
            ("/v1/models/text_lower:predict", {"instances": [{"b64": "%%"}]}, 400, "base64"),
        ]
        for path, body, status, text in cases:
            reply = client.post(path, json=body)
            assert reply.status_code == status, (path, body, reply.text)
            assert set(reply.json()) == {"error"} and text in reply.json()["error"], reply.text
        assert client.get("/v2/health/live").status_code == 200


def test_a_triton_repository_serves_unchanged(compat_server: Server) -> None:
    client = httpclient.InferenceServerClient(compat_server.url)
    config = client.get_model_config("simple")
    assert config["max_batch_size"] == 8
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 200
    assert config["instance_group"][0]["count"] == 2
    assert [i["dims"] for i in config["input"]] == [[4], [4]]
    ready = {
        row["version"]
        for row in client.get_model_repository_index()
        if row["name"] == "simple" and row["state"] == "READY"
    }
    assert ready == {"1", "3"}  # the specific version policy from config.pbtxt
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 2, dtype=np.float32)
    inputs = [
        grpcclient.InferInput("INPUT0", [2, 4], "FP32"),
        grpcclient.InferInput("INPUT1", [2, 4], "FP32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    answer = grpcclient.InferenceServerClient(compat_server.grpc_url).infer("simple", inputs)
    assert answer.get_response().model_version == "3"
    assert np.array_equal(answer.as_numpy("OUTPUT0"), a + b)
    assert np.array_equal(answer.as_numpy("OUTPUT1"), a - b)
