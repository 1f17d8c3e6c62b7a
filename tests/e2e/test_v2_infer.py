"""v2 REST inference with the official Triton client, checked against in-process onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from tests.support import Server

pytestmark = pytest.mark.e2e


def reference(repo: Path, model: str, version: int, inputs: dict[str, np.ndarray]) -> list:
    session = ort.InferenceSession(
        str(repo / model / str(version) / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(None, inputs)


@pytest.fixture
def client(server: Server) -> triton.InferenceServerClient:
    with triton.InferenceServerClient(server.url) as connection:
        yield connection


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_mlp_matches_onnxruntime(
    client: triton.InferenceServerClient, standard_repo: Path, binary_in: bool, binary_out: bool
) -> None:
    batch = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    tensor = triton.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary_in)
    wanted = triton.InferRequestedOutput("output", binary_data=binary_out)
    result = client.infer("mlp", [tensor], outputs=[wanted], request_id="req-7")
    (expected,) = reference(standard_repo, "mlp", 2, {"input": batch})
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response["model_version"] == "2"
    assert response["id"] == "req-7"


def test_client_defaults_work(client: triton.InferenceServerClient, standard_repo: Path) -> None:
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.ones((2, 16), dtype=np.float32)
    inputs = [
        triton.InferInput("INPUT0", [2, 16], "FP32"),
        triton.InferInput("INPUT1", [2, 16], "FP32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("add_sub", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_requested_output_subset(client: triton.InferenceServerClient) -> None:
    a = np.full((1, 16), 3, dtype=np.float32)
    inputs = [
        triton.InferInput("INPUT0", [1, 16], "FP32"),
        triton.InferInput("INPUT1", [1, 16], "FP32"),
    ]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    result = client.infer("add_sub", inputs, outputs=[triton.InferRequestedOutput("OUTPUT1")])
    assert [out["name"] for out in result.get_response()["outputs"]] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((1, 16), np.float32))


def test_explicit_versions_run_their_own_weights(
    client: triton.InferenceServerClient, standard_repo: Path
) -> None:
    batch = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    for version in (1, 2):
        tensor = triton.InferInput("input", [3, 64], "FP32")
        tensor.set_data_from_numpy(batch)
        result = client.infer("mlp", [tensor], model_version=str(version))
        (expected,) = reference(standard_repo, "mlp", version, {"input": batch})
        np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5, atol=1e-6)
        assert result.get_response()["model_version"] == str(version)


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_tensors_both_ways(client: triton.InferenceServerClient, binary: bool) -> None:
    words = np.array(["Hello", "WORLD", "ÜBER", ""], dtype=object)
    tensor = triton.InferInput("text", [4], "BYTES")
    tensor.set_data_from_numpy(words, binary_data=binary)
    result = client.infer(
        "text_lower", [tensor], outputs=[triton.InferRequestedOutput("lower", binary_data=binary)]
    )
    got = [item.decode() if isinstance(item, bytes) else item for item in result.as_numpy("lower")]
    assert got == ["hello", "world", "über", ""]


def test_health_metadata_and_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "9")
    metadata = client.get_server_metadata()
    assert metadata["name"] == "modelport"
    assert "binary_tensor_data" in metadata["extensions"]
    model = client.get_model_metadata("mlp")
    assert model["versions"] == ["1", "2"]
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert model["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get_model_metadata("mlp", "1")["versions"] == ["1"]


def test_model_config_in_triton_shape(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("mlp")
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 1024
    assert config["input"][0] == {
        "name": "input",
        "data_type": "TYPE_FP32",
        "format": "FORMAT_NONE",
        "dims": [64],
        "is_shape_tensor": False,
        "allow_ragged_batch": False,
        "optional": False,
    }
    assert config["output"][0]["dims"] == [10]
    assert config["version_policy"] == {"all": {}}
    text = client.get_model_config("text_lower")
    assert text["input"][0]["data_type"] == "TYPE_STRING"


def test_statistics_count_inferences(client: triton.InferenceServerClient) -> None:
    def success_count() -> tuple[int, int]:
        (stats,) = client.get_inference_statistics("add_sub", "1")["model_stats"]
        return stats["inference_stats"]["success"]["count"], stats["inference_count"]

    before_requests, before_inferences = success_count()
    a = np.zeros((5, 16), dtype=np.float32)
    inputs = [
        triton.InferInput("INPUT0", [5, 16], "FP32"),
        triton.InferInput("INPUT1", [5, 16], "FP32"),
    ]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    client.infer("add_sub", inputs)
    after_requests, after_inferences = success_count()
    assert after_requests == before_requests + 1
    assert after_inferences == before_inferences + 5
    all_stats = client.get_inference_statistics()["model_stats"]
    assert {(s["name"], s["version"]) for s in all_stats} >= {("mlp", "1"), ("mlp", "2")}


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_responses(
    client: triton.InferenceServerClient, standard_repo: Path, algorithm: str
) -> None:
    batch = np.random.default_rng(5).standard_normal((64, 64)).astype(np.float32)
    tensor = triton.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    result = client.infer(
        "mlp",
        [tensor],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    (expected,) = reference(standard_repo, "mlp", 2, {"input": batch})
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5, atol=1e-6)


def test_repository_index_ready_filter(server: Server) -> None:
    import httpx

    everything = httpx.post(f"{server.base}/v2/repository/index").json()
    ready = httpx.post(f"{server.base}/v2/repository/index", json={"ready": True}).json()
    assert ready == [row for row in everything if row["state"] == "READY"]
    assert httpx.post(f"{server.base}/v2/repository/index", content=b"[").status_code == 400


def test_large_responses_are_compressed_when_accepted(server: Server) -> None:
    import httpx

    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [64, 64], "data": [0.25] * 4096}]
    }
    url = f"{server.base}/v2/models/mlp/infer"
    packed = httpx.post(url, json=body, headers={"Accept-Encoding": "gzip"})
    plain = httpx.post(url, json=body, headers={"Accept-Encoding": "identity"})
    assert packed.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain.headers
    assert packed.json() == plain.json()
