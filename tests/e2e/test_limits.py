"""A model's limits on a real server: `rate_limit` answers 429 + Retry-After over REST (v2 and
TF Serving) and RESOURCE_EXHAUSTED over gRPC (unary, and per message in a stream that stays
open) once its burst is spent, while another model answers the same load; gRPC refusals carry
the `grpc-retry-pushback-ms` trailer (gRFC A6), which a grpcio retry policy honours;
`max_in_flight` refuses what is past the cap and lets the rest finish; a request's slot is
freed when its client goes away; the refusals are counted in /metrics."""

from __future__ import annotations

import json
import queue
import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from modelport.examples import onnx_models
from tests.support import Server, add_model, in_flight, run_server, wait_until

pytestmark = pytest.mark.e2e

BURST = 3
RATE_LIMITED = f"rate_limit: {{requests_per_second: 0.001, burst: {BURST}}}\n"
"""Three requests, then the next token in 1,000 s: nothing refills during a test."""
RETRY_LIMITED = "rate_limit: {requests_per_second: 0.5, burst: 1}\n"
"""One request, then a token every 2 s: a retry after the pushback finds it."""
RETRY_ON_RESOURCE_EXHAUSTED = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "inference.GRPCInferenceService"}],
                "retryPolicy": {
                    "maxAttempts": 2,
                    "initialBackoff": "0.01s",  # without a pushback: retried at once, refused
                    "maxBackoff": "0.01s",
                    "backoffMultiplier": 1,
                    "retryableStatusCodes": ["RESOURCE_EXHAUSTED"],
                },
            }
        ]
    }
)
HELD_MODEL = '''
import time
from pathlib import Path

import numpy as np


class Model:
    """Holds every run while the file `hold` exists beside this one."""

    def predict(self, inputs):
        while (Path(__file__).parent / "hold").exists():
            time.sleep(0.01)
        return {"y": np.asarray(inputs["x"], dtype=np.float32) + 1}
'''
HELD_CONFIG = """
max_batch_size: 8
inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]
outputs: [{name: y, datatype: FP32, shape: [-1, 4]}]
runtime: {executor: thread}
max_in_flight: 2
"""
V2_BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("limits-repo")
    add_model(root, "open", onnx_models.offset(1.0))
    for name in ("limited_v2", "limited_tf", "limited_grpc", "limited_stream", "limited_a6"):
        add_model(root, name, onnx_models.offset(1.0), config=RATE_LIMITED)
    add_model(root, "limited_retry", onnx_models.offset(1.0), config=RETRY_LIMITED)
    add_model(root, "gate", onnx_models.offset(1.0), config="max_in_flight: 1\n")
    add_model(root, "bad_limits", onnx_models.offset(1.0), config="max_in_flight: 0\n")
    held = root / "held" / "1"
    held.mkdir(parents=True)
    (held / "model.py").write_text(HELD_MODEL)
    (root / "held" / "config.yaml").write_text(HELD_CONFIG)
    return root


@pytest.fixture(scope="module")
def limits_server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("limits-logs") / "server.log"
    with run_server(repo, log) as running:
        yield running
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture
def grpc_client(limits_server: Server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(limits_server.grpc_url)
    yield client
    client.close()


def v2_infer(server: Server, model: str) -> httpx.Response:
    return httpx.post(f"{server.base}/v2/models/{model}/infer", json=V2_BODY, timeout=30)


def grpc_inputs() -> list[triton.InferInput]:
    tensor = triton.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
    return [tensor]


def raw_request(model: str) -> service_pb2.ModelInferRequest:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])
    data = np.arange(4, dtype=np.float32).tobytes()
    return service_pb2.ModelInferRequest(
        model_name=model, inputs=[tensor], raw_input_contents=[data]
    )


def raw_refusal(channel: grpc.Channel, model: str) -> grpc.RpcError:
    """The error of a ModelInfer call that must fail, made with grpcio itself."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(raw_request(model), timeout=30)
    return refused.value


def pushback_ms(error: grpc.RpcError) -> int | None:
    trailers = dict(error.trailing_metadata() or ())
    value = trailers.get("grpc-retry-pushback-ms")
    return None if value is None else int(value)


def limited_count(server: Server, model: str, limit: str) -> float:
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    labels = f'limit="{limit}",model="{model}"'
    pattern = rf"^modelport_inference_request_limited_total{{{labels}}} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def assert_retry_after(answer: httpx.Response, low: int, high: int) -> None:
    assert answer.status_code == 429
    assert low <= int(answer.headers["retry-after"]) <= high


def test_v2_rest_answers_429_with_retry_after_past_the_burst(limits_server: Server) -> None:
    answers = [v2_infer(limits_server, "limited_v2") for _ in range(BURST + 2)]
    assert [a.status_code for a in answers] == [200] * BURST + [429, 429]
    refused = answers[-1]
    assert refused.json()["error"].startswith(
        "model 'limited_v2' is over its rate limit of 0.001 requests per second (burst 3)"
    )
    assert_retry_after(refused, 990, 1000)  # the time until the next token, in whole seconds
    assert [v2_infer(limits_server, "open").status_code for _ in range(BURST + 2)] == [200] * 5
    assert limited_count(limits_server, "limited_v2", "rate_limit") == 2
    assert limited_count(limits_server, "open", "rate_limit") == 0


def test_tf_serving_rest_answers_429_with_retry_after(limits_server: Server) -> None:
    def predict(model: str) -> httpx.Response:
        url = f"{limits_server.base}/v1/models/{model}:predict"
        return httpx.post(url, json={"instances": [[1, 2, 3, 4]]}, timeout=30)

    answers = [predict("limited_tf") for _ in range(BURST + 1)]
    assert [a.status_code for a in answers] == [200] * BURST + [429]
    assert answers[0].json() == {"predictions": [[2.0, 3.0, 4.0, 5.0]]}
    assert "over its rate limit" in answers[-1].json()["error"]
    assert_retry_after(answers[-1], 990, 1000)
    assert [predict("open").status_code for _ in range(BURST + 1)] == [200] * (BURST + 1)


def test_grpc_answers_resource_exhausted_past_the_burst(
    grpc_client: triton.InferenceServerClient,
) -> None:
    for _ in range(BURST):
        grpc_client.infer("limited_grpc", grpc_inputs())
    with pytest.raises(InferenceServerException) as refused:
        grpc_client.infer("limited_grpc", grpc_inputs())
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "model 'limited_grpc' is over its rate limit" in refused.value.message()
    for _ in range(BURST + 1):
        grpc_client.infer("open", grpc_inputs())


def test_grpc_rate_limit_refusals_carry_the_retry_pushback_trailer(limits_server: Server) -> None:
    """gRFC A6: `grpc-retry-pushback-ms` says, in milliseconds, when to retry, as REST's
    Retry-After does in seconds; other errors carry none."""
    with grpc.insecure_channel(limits_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(BURST):
            stub.ModelInfer(raw_request("limited_a6"), timeout=30)
        refused = raw_refusal(channel, "limited_a6")
        missing = raw_refusal(channel, "no_such_model")
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    wait = pushback_ms(refused)
    assert wait is not None and 990_000 <= wait <= 1_000_000  # the next token, in 1,000 s
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert pushback_ms(missing) is None


def test_a_grpcio_retry_policy_waits_the_pushback_and_then_succeeds(limits_server: Server) -> None:
    """The client's own backoff (10 ms) would retry before the next token and be refused
    again; waiting the pushback (up to 2 s) it finds the token: one refusal, then the answer."""
    options = [("grpc.enable_retries", 1), ("grpc.service_config", RETRY_ON_RESOURCE_EXHAUSTED)]
    with grpc.insecure_channel(limits_server.grpc_url, options=options) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(raw_request("limited_retry"), timeout=30)  # the burst
        reply = stub.ModelInfer(raw_request("limited_retry"), timeout=30)  # refused, retried
    assert reply.model_name == "limited_retry"
    assert limited_count(limits_server, "limited_retry", "rate_limit") == 1


def test_a_stream_answers_refusals_per_message_and_stays_open(
    grpc_client: triton.InferenceServerClient,
) -> None:
    replies: queue.Queue[tuple[triton.InferResult | None, Exception | None]] = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: replies.put((result, error)))
    try:
        for number in range(BURST + 2):
            grpc_client.async_stream_infer("limited_stream", grpc_inputs(), request_id=str(number))
        first = [replies.get(timeout=30) for _ in range(BURST + 2)]
        grpc_client.async_stream_infer("open", grpc_inputs(), request_id="after")  # still open
        after, error = replies.get(timeout=30)
    finally:
        grpc_client.stop_stream()
    answered = [result for result, error in first if error is None]
    refused = [str(error) for _, error in first if error is not None]
    assert len(answered) == BURST and len(refused) == 2
    assert all("model 'limited_stream' is over its rate limit" in text for text in refused)
    assert error is None and after is not None and after.get_response().id == "after"


def test_max_in_flight_refuses_past_the_cap_and_the_rest_succeed(
    limits_server: Server, repo: Path, grpc_client: triton.InferenceServerClient
) -> None:
    hold = repo / "held" / "1" / "hold"
    hold.touch()
    try:
        with ThreadPoolExecutor(2) as pool:
            running = [pool.submit(v2_infer, limits_server, "held") for _ in range(2)]
            wait_until(lambda: in_flight(limits_server, "held") == 2, "two requests running")
            refused = [v2_infer(limits_server, "held") for _ in range(2)]
            with pytest.raises(InferenceServerException) as grpc_refused:
                grpc_client.infer("held", grpc_inputs())
            with grpc.insecure_channel(limits_server.grpc_url) as channel:
                raw_refused = raw_refusal(channel, "held")
            assert v2_infer(limits_server, "open").status_code == 200  # other models: no cap
            hold.unlink()
            finished = [future.result(timeout=30) for future in running]
    finally:
        hold.unlink(missing_ok=True)
    for answer in refused:
        assert_retry_after(answer, 1, 1)
        assert answer.json()["error"] == (
            "model 'held' has 2 requests in flight, its max_in_flight; retry in 1 s"
        )
    assert grpc_refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert pushback_ms(raw_refused) == 1000  # a slot frees when any request ends: 1 s, as REST
    assert [answer.status_code for answer in finished] == [200, 200]
    assert finished[0].json()["outputs"][0]["data"] == [2.0, 3.0, 4.0, 5.0]
    assert limited_count(limits_server, "held", "max_in_flight") == 4
    assert v2_infer(limits_server, "held").status_code == 200  # the slots came back


def test_a_client_that_goes_away_mid_body_frees_its_slot(limits_server: Server) -> None:
    """The slot is taken before the body is read (no decoding work for a refused request), so
    a slow upload holds it; a client that disconnects gives it back."""
    with socket.create_connection(("127.0.0.1", limits_server.http_port)) as uploader:
        uploader.sendall(
            b"POST /v2/models/gate/infer HTTP/1.1\r\nhost: test\r\n"
            b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"
        )
        wait_until(
            lambda: v2_infer(limits_server, "gate").status_code == 429,
            "the unfinished upload holds gate's one slot",
            timeout=10,
        )
    wait_until(
        lambda: v2_infer(limits_server, "gate").status_code == 200,
        "the slot is free once the uploader disconnected",
        timeout=10,
    )


def test_a_bad_limit_fails_the_models_load_naming_the_field(limits_server: Server) -> None:
    index = httpx.post(f"{limits_server.base}/v2/repository/index", timeout=10).json()
    [row] = [row for row in index if row["name"] == "bad_limits"]
    assert row["state"] != "READY"
    assert (
        "invalid config.yaml: max_in_flight: Input should be greater than or equal to 1"
        in (row["reason"])
    )
    assert v2_infer(limits_server, "open").status_code == 200  # the others serve
