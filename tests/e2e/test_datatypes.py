"""Every v2 datatype ONNX supports, round-tripped through identity models, JSON and binary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from modelport.examples import onnx_models
from tests.support import Server, add_model, run_server

pytestmark = pytest.mark.e2e

SAMPLES = {
    "BOOL": np.array([[True, False, True, True]]),
    "UINT8": np.array([[0, 1, 200, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 60000, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 4_000_000_000, 7]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**63 + 5, 7]], dtype=np.uint64),
    "INT8": np.array([[-128, -1, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-32768, -1, 0, 32767]], dtype=np.int16),
    "INT32": np.array([[-(2**31), -1, 0, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), -1, 0, 2**62]], dtype=np.int64),
    "FP16": np.array([[-1.5, 0.0, 0.25, 65504.0]], dtype=np.float16),
    "FP32": np.array([[-1.5, 0.0, 3.25, 1e30]], dtype=np.float32),
    "FP64": np.array([[-1.5, 0.0, 1e-300, 1e300]], dtype=np.float64),
    "BYTES": np.array([[b"a", b"", "çà".encode(), b"x" * 40]], dtype=object),
}


@pytest.fixture(scope="module")
def typed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("typed")
    for datatype in SAMPLES:
        add_model(repo, f"id_{datatype.lower()}", onnx_models.identity(datatype))
    with run_server(repo, repo.parent / "typed.log") as server:
        yield server


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_identity_round_trip(typed_server: Server, datatype: str, binary: bool) -> None:
    data = SAMPLES[datatype]
    with triton.InferenceServerClient(typed_server.url) as client:
        tensor = triton.InferInput("x", list(data.shape), datatype)
        tensor.set_data_from_numpy(data, binary_data=binary)
        wanted = triton.InferRequestedOutput("y", binary_data=binary)
        result = client.infer(f"id_{datatype.lower()}", [tensor], outputs=[wanted])
        assert result.get_output("y")["datatype"] == datatype
        got = result.as_numpy("y")
    if datatype == "BYTES":
        got = np.vectorize(lambda v: v if isinstance(v, bytes) else v.encode(), otypes=[object])(
            got
        )
    else:
        assert got.dtype == data.dtype
    np.testing.assert_array_equal(got, data)


def test_metadata_reports_datatypes(typed_server: Server) -> None:
    with triton.InferenceServerClient(typed_server.url) as client:
        for datatype in SAMPLES:
            metadata = client.get_model_metadata(f"id_{datatype.lower()}")
            assert metadata["inputs"][0]["datatype"] == datatype


def test_nested_and_flat_json_agree(typed_server: Server) -> None:
    import httpx

    url = f"{typed_server.base}/v2/models/id_int32/infer"
    for data in ([[1, 2, 3, 4], [5, 6, 7, 8]], [1, 2, 3, 4, 5, 6, 7, 8]):
        body = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 4], "data": data}]}
        reply = httpx.post(url, json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["outputs"][0]["data"] == [1, 2, 3, 4, 5, 6, 7, 8]
        assert reply.json()["outputs"][0]["shape"] == [2, 4]


def test_repository_path_is_used(typed_server: Server, tmp_path: Path) -> None:
    assert "serving the model repository" in typed_server.log_text()


def test_grpc_typed_uint64_contents_are_exact(typed_server: Server) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    values = [2**64 - 1, 2**63 + 1, 2**53 + 1, 3]
    request = service_pb2.ModelInferRequest(model_name="id_uint64")
    tensor = request.inputs.add(name="x", datatype="UINT64", shape=[1, 4])
    tensor.contents.uint64_contents.extend(values)
    with grpc.insecure_channel(typed_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request)
        assert np.frombuffer(response.raw_output_contents[0], np.uint64).tolist() == values
        request.raw_input_contents.append(np.array(values, np.uint64).tobytes())
        with pytest.raises(grpc.RpcError, match="use one or the other"):
            stub.ModelInfer(request)
