"""Dynamic batching on a real server: integrity under concurrency, queue limit, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from modelport.examples import onnx_models
from tests.support import Server, add_model, in_flight, run_server, wait_until

pytestmark = pytest.mark.e2e

BATCHED = """\
dynamic_batching: {max_batch_size: 32, max_queue_delay: 2ms}
instance_count: 2
"""
SLOW_QUEUE = """\
dynamic_batching: {max_batch_size: 64, max_queue_delay: 3000ms, max_queue_size: 2}
"""


@pytest.fixture(scope="module")
def batching_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("batching")
    add_model(repo, "mlp", onnx_models.mlp((64, 256, 256, 10), seed=4), config=BATCHED)
    add_model(repo, "waiting", onnx_models.add_sub("FP32", 4), config=SLOW_QUEUE)
    return repo


@pytest.fixture(scope="module")
def batching_server(batching_repo: Path) -> Iterator[Server]:
    with run_server(batching_repo, batching_repo.parent / "batching.log") as server:
        yield server


def reference(repo: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(repo / "mlp" / "1" / "model.onnx"))
    return np.asarray(session.run(None, {"input": batch})[0])


def make_requests(count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (f"r{seed}-{i}", rng.standard_normal((1 + i % 4, 64)).astype(np.float32))
        for i in range(count)
    ]


async def http_requests(server: Server, requests: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=server.base, limits=limits, timeout=60) as client:

        async def one(request_id: str, batch: np.ndarray) -> tuple[str, np.ndarray]:
            body = {
                "id": request_id,
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": list(batch.shape),
                        "data": batch.ravel().tolist(),
                    }
                ],
            }
            reply = await client.post("/v2/models/mlp/infer", json=body)
            assert reply.status_code == 200, reply.text
            document = reply.json()
            output = document["outputs"][0]
            return document["id"], np.array(output["data"], np.float32).reshape(output["shape"])

        return dict(await asyncio.gather(*(one(rid, batch) for rid, batch in requests)))


async def grpc_requests(server: Server, requests: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
    client = triton_aio.InferenceServerClient(server.grpc_url)
    try:

        async def one(request_id: str, batch: np.ndarray) -> tuple[str, np.ndarray]:
            tensor = triton_aio.InferInput("input", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            result = await client.infer("mlp", [tensor], request_id=request_id)
            return result.get_response().id, result.as_numpy("output")

        return dict(await asyncio.gather(*(one(rid, batch) for rid, batch in requests)))
    finally:
        await client.close()


def test_concurrent_requests_over_both_protocols_get_their_own_answers(
    batching_server: Server, batching_repo: Path
) -> None:
    repo = batching_repo
    http_batch, grpc_batch = make_requests(300, seed=1), make_requests(300, seed=2)

    async def both() -> tuple[dict[str, Any], dict[str, Any]]:
        return await asyncio.gather(
            http_requests(batching_server, http_batch), grpc_requests(batching_server, grpc_batch)
        )

    via_http, via_grpc = asyncio.run(both())
    for sent, received in ((http_batch, via_http), (grpc_batch, via_grpc)):
        assert sorted(received) == sorted(request_id for request_id, _ in sent)
        for request_id, batch in sent:
            np.testing.assert_allclose(
                received[request_id], reference(repo, batch), rtol=1e-4, atol=1e-5
            )
    stats = httpx.get(f"{batching_server.base}/v2/models/mlp/stats").json()["model_stats"][0]
    requests = stats["inference_stats"]["success"]["count"]
    assert requests >= 600
    assert stats["inference_count"] >= sum(len(b) for _, b in http_batch + grpc_batch)
    assert stats["execution_count"] < requests, "no two requests were ever batched together"
    assert max(entry["batch_size"] for entry in stats["batch_stats"]) > 4
    assert max(entry["batch_size"] for entry in stats["batch_stats"]) <= 32
    metrics = httpx.get(f"{batching_server.base}/metrics").text
    assert 'modelport_batch_size_count{model="mlp",version="1"}' in metrics
    assert 'modelport_queue_duration_seconds_count{model="mlp",version="1"}' in metrics


def test_a_batch_over_the_batchers_limit_is_refused(batching_server: Server) -> None:
    body = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [33, 64], "data": [0.0] * 33 * 64}
        ]
    }
    reply = httpx.post(f"{batching_server.base}/v2/models/mlp/infer", json=body)
    assert reply.status_code == 400
    assert "batch size 33 exceeds the model's max_batch_size 32" in reply.json()["error"]
    config = httpx.get(f"{batching_server.base}/v2/models/mlp/config").json()
    assert config["max_batch_size"] == 32


def add_sub_body(timeout_us: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {"name": name, "datatype": "FP32", "shape": [1, 4], "data": [1.0] * 4}
            for name in ("INPUT0", "INPUT1")
        ]
    }
    if timeout_us is not None:
        body["parameters"] = {"timeout": timeout_us}
    return body


def test_queue_limit_answers_503_at_once_and_timeouts_504(batching_server: Server) -> None:
    url = f"{batching_server.base}/v2/models/waiting/infer"

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            waiting = [
                asyncio.ensure_future(client.post(url, json=add_sub_body())) for _ in range(2)
            ]
            await asyncio.to_thread(
                wait_until, lambda: in_flight(batching_server, "waiting") == 2, "both queued"
            )  # both now wait out the 3 s queue delay
            refused = await client.post(url, json=add_sub_body())
            assert refused.status_code == 503, refused.text
            assert "queue is full (2 requests)" in refused.json()["error"]
            # refused at once: while the two it could not join still wait for their batch
            assert not any(reply.done() for reply in waiting)
            return [refused, *await asyncio.gather(*waiting)]

    _, *served = asyncio.run(scenario())
    assert [reply.status_code for reply in served] == [200, 200]

    reply = httpx.post(url, json=add_sub_body(timeout_us=100_000), timeout=30)
    assert reply.status_code == 504
    assert "timed out after 100 ms in the queue" in reply.json()["error"]
    reply = httpx.post(url, json=add_sub_body(timeout_us=-5), timeout=30)
    assert reply.status_code == 400


def test_grpc_deadline_and_queue_limit_codes(batching_server: Server) -> None:
    client = triton_grpc.InferenceServerClient(batching_server.grpc_url)
    inputs = [triton_grpc.InferInput(name, [1, 4], "FP32") for name in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("waiting", inputs, client_timeout=0.2)
    assert "DEADLINE_EXCEEDED" in str(caught.value.status())
    client.close()
