"""The gRPC transport with real clients: large messages, compression, stray bytes, stopping."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from modelport.examples import onnx_models
from tests.support import Server, add_model, in_flight, run_server, wait_until

pytestmark = pytest.mark.e2e

ROW = 1 << 18  # FP32 elements per row: 1 MiB
SLOW = "dynamic_batching: {max_batch_size: 8, max_queue_delay: 1500ms}\n"  # waits 1.5 s queued


@pytest.fixture(scope="module")
def transport_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("transport")
    add_model(repo, "wide", onnx_models.identity("FP32", ("N", ROW)))
    with run_server(repo, repo / "server.log") as server:
        yield server
    assert "Traceback" not in server.log_text(), server.log_text()


@pytest.fixture
def client(transport_server: Server) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(transport_server.grpc_url)
    yield connection
    connection.close()


def wide_input(rows: int, seed: int) -> tuple[triton.InferInput, np.ndarray]:
    data = np.random.default_rng(seed).standard_normal((rows, ROW)).astype(np.float32)
    tensor = triton.InferInput("x", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return tensor, data


def test_messages_many_times_the_flow_control_windows(
    client: triton.InferenceServerClient,
) -> None:
    tensor, data = wide_input(12, seed=1)  # 12 MiB each way: the server's window is 1 MiB
    result = client.infer("wide", [tensor])
    np.testing.assert_array_equal(result.as_numpy("y"), data)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_calls(client: triton.InferenceServerClient, algorithm: str) -> None:
    tensor, data = wide_input(2, seed=2)
    result = client.infer("wide", [tensor], compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("y"), data)


def test_concurrent_calls_on_one_channel(client: triton.InferenceServerClient) -> None:
    replies: dict[int, np.ndarray] = {}
    sent = {}

    def call(index: int) -> None:
        tensor, data = wide_input(1, seed=100 + index)
        sent[index] = data
        replies[index] = client.infer("wide", [tensor]).as_numpy("y")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(replies) == list(range(16))
    for index, reply in replies.items():
        np.testing.assert_array_equal(reply, sent[index])


def test_http1_and_garbage_on_the_grpc_port_leave_the_server_serving(
    transport_server: Server, client: triton.InferenceServerClient
) -> None:
    with socket.create_connection(("127.0.0.1", transport_server.grpc_port), timeout=5) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request")
    assert b"serves gRPC" in answer
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    for junk in (b"\x00\x01garbage" * 100, preface + b"\xff" * 64):
        with socket.create_connection(("127.0.0.1", transport_server.grpc_port), timeout=5) as s:
            s.sendall(junk)
            while s.recv(4096):  # the server closes the connection
                pass
    assert client.is_server_live()
    tensor, data = wide_input(1, seed=3)
    np.testing.assert_array_equal(client.infer("wide", [tensor]).as_numpy("y"), data)


def test_sigterm_lets_a_call_in_flight_finish(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "slow", onnx_models.add_sub("FP32", 4), config=SLOW)
    with run_server(repo, tmp_path / "server.log") as server:
        client = triton.InferenceServerClient(server.grpc_url)
        inputs = [triton.InferInput(name, [1, 4], "FP32") for name in ("INPUT0", "INPUT1")]
        for tensor in inputs:
            tensor.set_data_from_numpy(np.full((1, 4), 3, np.float32))
        outcome: dict[str, object] = {}

        def call() -> None:
            try:
                outcome["sum"] = client.infer("slow", inputs).as_numpy("OUTPUT0")
            except Exception as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=call)
        worker.start()
        # the request now waits in the batcher's queue, for the 1.5 s queue delay
        wait_until(lambda: in_flight(server, "slow") == 1, "the call queued")
        server.process.send_signal(signal.SIGTERM)
        worker.join(30)
        assert "error" not in outcome, outcome
        np.testing.assert_array_equal(outcome["sum"], np.full((1, 4), 6, np.float32))
        # uvicorn re-raises the signal once its shutdown is complete
        assert server.process.wait(30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log_text()
        assert "Traceback" not in server.log_text()
        client.close()
