"""The v2 gRPC service with tritonclient.grpc and with a stub generated from the published proto."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.support import Server

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(server.grpc_url)
    yield connection
    connection.close()


@pytest.fixture
def published_stub(server: Server) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """A stub generated from the published v2/Triton protos (shipped inside tritonclient)."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def mlp_reference(repo: Path, version: int, batch: np.ndarray) -> np.ndarray:
    path = repo / "mlp" / str(version) / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": batch})[0]


def test_health_metadata_config(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "9")
    assert not client.is_model_ready("nope")
    assert "statistics" in client.get_server_metadata().extensions
    metadata = client.get_model_metadata("mlp", as_json=True)
    assert metadata["versions"] == ["1", "2"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}]
    config = client.get_model_config("mlp").config
    assert (config.max_batch_size, list(config.input[0].dims)) == (1024, [64])
    assert config.input[0].data_type == 11  # TYPE_FP32
    assert config.platform == "onnxruntime_onnx"
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "mlp", "version": "2", "state": "READY"} in index


def test_infer_matches_onnxruntime(
    client: triton.InferenceServerClient, standard_repo: Path
) -> None:
    batch = np.random.default_rng(3).standard_normal((7, 64)).astype(np.float32)
    tensor = triton.InferInput("input", [7, 64], "FP32")
    tensor.set_data_from_numpy(batch)
    for version in ("1", "2"):
        result = client.infer("mlp", [tensor], model_version=version, request_id=f"v{version}")
        np.testing.assert_allclose(
            result.as_numpy("output"),
            mlp_reference(standard_repo, int(version), batch),
            rtol=1e-5,
            atol=1e-6,
        )
        response = result.get_response()
        assert (response.model_version, response.id) == (version, f"v{version}")


def test_bytes_and_output_subset(client: triton.InferenceServerClient) -> None:
    text = triton.InferInput("text", [3], "BYTES")
    text.set_data_from_numpy(np.array([b"MiXeD", b"", "ÉTÉ".encode()], dtype=object))
    result = client.infer("text_lower", [text])
    assert result.as_numpy("lower").tolist() == [b"mixed", b"", "été".encode()]
    ones = np.ones((1, 16), dtype=np.float32)
    inputs = [
        triton.InferInput("INPUT0", [1, 16], "FP32"),
        triton.InferInput("INPUT1", [1, 16], "FP32"),
    ]
    for tensor in inputs:
        tensor.set_data_from_numpy(ones)
    result = client.infer("add_sub", inputs, outputs=[triton.InferRequestedOutput("OUTPUT1")])
    assert [output.name for output in result.get_response().outputs] == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((1, 16), np.float32))


def test_typed_contents_from_a_published_proto_stub(
    published_stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    request = service_pb2.ModelInferRequest(model_name="add_sub", id="typed")
    for name, values in (("INPUT0", range(16)), ("INPUT1", [2.0] * 16)):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        tensor.contents.fp32_contents.extend(values)
    response = published_stub.ModelInfer(request)
    assert response.id == "typed"
    assert [output.name for output in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    total = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    np.testing.assert_array_equal(total, np.arange(16, dtype=np.float32) + 2)


@pytest.mark.parametrize(
    ("mutate", "code", "words"),
    [
        (lambda r: setattr(r, "model_name", "nope"), grpc.StatusCode.NOT_FOUND, "unknown model"),
        (lambda r: setattr(r, "model_version", "5"), grpc.StatusCode.NOT_FOUND, "unknown version"),
        (
            lambda r: r.inputs[0].shape.__setitem__(1, 15),
            grpc.StatusCode.INVALID_ARGUMENT,
            "does not match",
        ),
        (
            lambda r: setattr(r.inputs[0], "datatype", "INT32"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "datatype",
        ),
        (
            lambda r: r.inputs[0].contents.fp32_contents.append(1.0),
            grpc.StatusCode.INVALID_ARGUMENT,
            "holds 17 elements",
        ),
        (
            lambda r: r.raw_input_contents.append(b"\0" * 64),
            grpc.StatusCode.INVALID_ARGUMENT,
            "raw_input_contents has 1 entries for 2 inputs",
        ),
        (
            lambda r: r.outputs.add(name="OUTPUT9"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown output 'OUTPUT9'",
        ),
        (lambda r: r.inputs.pop(), grpc.StatusCode.INVALID_ARGUMENT, "missing input"),
    ],
    ids=["model", "version", "shape", "datatype", "count", "raw-count", "output", "missing"],
)
def test_errors_map_to_status_codes(
    published_stub: service_pb2_grpc.GRPCInferenceServiceStub,
    mutate: object,
    code: grpc.StatusCode,
    words: str,
) -> None:
    request = service_pb2.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        tensor.contents.fp32_contents.extend([1.0] * 16)
    mutate(request)  # type: ignore[operator]
    with pytest.raises(grpc.RpcError) as caught:
        published_stub.ModelInfer(request)
    assert caught.value.code() == code
    assert words in caught.value.details()
    assert published_stub.ServerLive(service_pb2.ServerLiveRequest()).live


def test_unimplemented_rpcs_say_so(
    published_stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        published_stub.SystemSharedMemoryStatus(service_pb2.SystemSharedMemoryStatusRequest())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_stream_infer_answers_each_request_by_id(
    client: triton.InferenceServerClient, standard_repo: Path
) -> None:
    replies: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    batches = {}
    try:
        for index in range(20):
            batch = np.random.default_rng(index).standard_normal((1 + index % 3, 64))
            batches[f"s{index}"] = batch.astype(np.float32)
            tensor = triton.InferInput("input", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batches[f"s{index}"])
            client.async_stream_infer("mlp", [tensor], request_id=f"s{index}", model_version="1")
        bad = triton.InferInput("input", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
        client.async_stream_infer("mlp", [bad], request_id="bad")
        seen, errors = {}, []
        for _ in range(21):
            result, error = replies.get(timeout=30)
            if error is not None:
                errors.append(error)
            else:
                seen[result.get_response().id] = result.as_numpy("output")
    finally:
        client.stop_stream()
    assert sorted(seen) == sorted(batches)
    for request_id, output in seen.items():
        expected = mlp_reference(standard_repo, 1, batches[request_id])
        np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)
    assert len(errors) == 1 and "does not match" in str(errors[0])


def test_statistics_over_grpc(client: triton.InferenceServerClient) -> None:
    stats = client.get_inference_statistics("mlp", "1", as_json=True)["model_stats"][0]
    assert stats["name"] == "mlp" and stats["version"] == "1"
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_inference_statistics("nope")
