"""Traces from a real `modelport serve --trace-sample-ratio 1 --otlp-endpoint URL`, exported by
the real OTLP/HTTP exporter to a receiver this test runs: an HTTP server on a free 127.0.0.1 port
that decodes each ExportTraceServiceRequest (opentelemetry-proto's message) and keeps its spans.
Checked span by span over REST (v2 and TF Serving) and gRPC, with the client's `traceparent`
continued, and a batch of concurrent requests as one batch span linked to each of them."""

from __future__ import annotations

import concurrent.futures
import gzip
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from modelport.examples import onnx_models
from tests.support import Server, add_model, free_port, run_server, wait_until

CLIENT_SPAN = "b7ad6b7169203331"
BATCH_OF = 4
ADD_SUB_BODY = {
    "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [2.0] * 16},
    ]
}


@dataclass(frozen=True)
class Received:
    """One span as the receiver decoded it, with its resource's attributes."""

    span: Span
    resource: dict[str, object]

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def attributes(self) -> dict[str, object]:
        return _attributes(self.span.attributes)

    @property
    def links(self) -> list[tuple[str, str]]:
        return [(link.trace_id.hex(), link.span_id.hex()) for link in self.span.links]


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def _attributes(pairs: list[KeyValue]) -> dict[str, object]:
    return {pair.key: _value(pair.value) for pair in pairs}


class OtlpReceiver:
    """POST /v1/traces: OTLP/HTTP protobuf in, spans kept in memory."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                assert self.path == "/v1/traces", self.path
                assert self.headers["Content-Type"] == "application/x-protobuf"
                receiver.take(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def take(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(Received(span, resource))

    def trace(self, trace_id: str) -> list[Received]:
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def wait_for(self, trace_id: str, names: set[str]) -> dict[str, list[Received]]:
        """The trace's spans by name, once every one of `names` has arrived."""

        def arrived() -> bool:
            return names <= {span.name for span in self.trace(trace_id)}

        wait_until(arrived, f"spans {sorted(names)} of trace {trace_id}")
        named: dict[str, list[Received]] = {}
        for span in self.trace(trace_id):
            named.setdefault(span.name, []).append(span)
        return named

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@dataclass
class Traced:
    server: Server
    receiver: OtlpReceiver


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    repo = tmp_path_factory.mktemp("traced")
    add_model(repo, "add_sub", onnx_models.add_sub("FP32", 16))
    batching = f"dynamic_batching: {{max_batch_size: {BATCH_OF}, max_queue_delay: 30s}}\n"
    add_model(repo, "mlp", onnx_models.mlp((64, 32, 10), seed=1), config=batching)
    receiver = OtlpReceiver()
    log = repo.parent / "traced-server.log"
    endpoint = f"http://127.0.0.1:{receiver.port}/v1/traces"
    args = ("--trace-sample-ratio", "1", "--otlp-endpoint", endpoint)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(os.environ, "OTEL_BSP_SCHEDULE_DELAY", "100")  # export every 0.1 s
        try:
            with run_server(repo, log, *args) as server:
                yield Traced(server, receiver)
        finally:
            receiver.close()
    assert "Traceback" not in log.read_text(), log.read_text()


def client_parent(test_id: int) -> tuple[str, str]:
    """A traceparent of the client's own (sampled) and its trace id."""
    trace_id = f"{test_id:032x}"
    return f"00-{trace_id}-{CLIENT_SPAN}-01", trace_id


def check_request_tree(
    named: dict[str, list[Received]], root_name: str, parent_id: str
) -> tuple[Received, Received]:
    """The request span under the client's, its stages under it, and its one batch (with the
    compute span under that); returns (request, batch)."""
    (request,) = named[root_name]
    assert request.parent_id == parent_id
    assert request.span.kind == Span.SPAN_KIND_SERVER
    assert request.resource["service.name"] == "modelport"
    for stage in ("decode", "queue wait", "encode", "batch"):
        (span,) = named[stage]
        assert span.parent_id == request.span_id, stage
        assert request.span.start_time_unix_nano <= span.span.start_time_unix_nano, stage
        assert span.span.end_time_unix_nano <= request.span.end_time_unix_nano, stage
    (batch,) = named["batch"]
    (compute,) = named["compute"]
    assert compute.parent_id == batch.span_id
    assert batch.links == [(request.trace_id, request.span_id)]
    assert request.links == [(batch.trace_id, batch.span_id)]
    return request, batch


def test_a_rest_request_continues_the_clients_trace(traced: Traced) -> None:
    traceparent, trace_id = client_parent(1)
    headers = {"traceparent": traceparent, "tracestate": "vendor=x", "x-request-id": "rest-1"}
    url = f"{traced.server.base}/v2/models/add_sub/infer"
    answer = httpx.post(url, json=ADD_SUB_BODY, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    names = {"POST /v2/models/{model}/infer", "decode", "queue wait", "batch", "compute", "encode"}
    named = traced.receiver.wait_for(trace_id, names)
    request, batch = check_request_tree(named, "POST /v2/models/{model}/infer", CLIENT_SPAN)
    assert request.span.trace_state == "vendor=x"
    attributes = request.attributes
    assert attributes["http.response.status_code"] == 200
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/v2/models/{model}/infer"
    assert attributes["url.path"] == "/v2/models/add_sub/infer"
    assert attributes["modelport.protocol"] == "rest"
    assert attributes["modelport.model.name"] == "add_sub"
    assert attributes["modelport.model.version"] == "1"
    assert attributes["modelport.batch.size"] == 1
    assert attributes["modelport.request.id"] == "rest-1"
    assert batch.attributes["modelport.batch.size"] == 1
    assert batch.attributes["modelport.model.name"] == "add_sub"


def test_a_grpc_call_continues_the_clients_trace(traced: Traced) -> None:
    traceparent, trace_id = client_parent(2)
    client = triton_grpc.InferenceServerClient(traced.server.grpc_url)
    try:
        inputs = []
        for name in ("INPUT0", "INPUT1"):
            tensor = triton_grpc.InferInput(name, [1, 16], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
            inputs.append(tensor)
        headers = {"traceparent": traceparent, "x-request-id": "grpc-2"}
        result = client.infer("add_sub", inputs, headers=headers)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2.0))
    finally:
        client.close()
    root = "inference.GRPCInferenceService/ModelInfer"
    names = {root, "decode", "queue wait", "batch", "compute", "encode"}
    named = traced.receiver.wait_for(trace_id, names)
    request, _ = check_request_tree(named, root, CLIENT_SPAN)
    attributes = request.attributes
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == "inference.GRPCInferenceService"
    assert attributes["rpc.method"] == "ModelInfer"
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["modelport.protocol"] == "grpc"
    assert attributes["modelport.model.name"] == "add_sub"
    assert attributes["modelport.request.id"] == "grpc-2"


def test_a_tf_serving_predict_is_traced_as_tfserving(traced: Traced) -> None:
    traceparent, trace_id = client_parent(3)
    body = {"instances": [{"INPUT0": [1.0] * 16, "INPUT1": [1.0] * 16}]}
    url = f"{traced.server.base}/v1/models/add_sub:predict"
    answer = httpx.post(url, json=body, headers={"traceparent": traceparent}, timeout=30)
    assert answer.status_code == 200, answer.text
    root = "POST /v1/models/{model}:predict"
    named = traced.receiver.wait_for(trace_id, {root, "decode", "queue wait", "encode"})
    (request,) = named[root]
    assert request.parent_id == CLIENT_SPAN
    assert request.attributes["modelport.protocol"] == "tfserving"
    assert request.attributes["http.response.status_code"] == 200


def test_a_failed_request_is_traced_with_its_status(traced: Traced) -> None:
    traceparent, trace_id = client_parent(4)
    url = f"{traced.server.base}/v2/models/add_sub/infer"
    answer = httpx.post(url, json={"inputs": []}, headers={"traceparent": traceparent})
    assert answer.status_code == 400
    (request,) = traced.receiver.wait_for(trace_id, {"POST /v2/models/{model}/infer"})[
        "POST /v2/models/{model}/infer"
    ]
    assert request.attributes["http.response.status_code"] == 400
    assert request.span.status.code == 0  # a client's error leaves a server span unset


def test_concurrent_requests_that_join_one_batch_are_linked_to_its_one_span(
    traced: Traced,
) -> None:
    url = f"{traced.server.base}/v2/models/mlp/infer"
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
    parents = [client_parent(100 + index) for index in range(BATCH_OF)]

    def send(traceparent: str) -> int:
        headers = {"traceparent": traceparent}
        return httpx.post(url, json=body, headers=headers, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(BATCH_OF) as pool:
        statuses = list(pool.map(send, [traceparent for traceparent, _ in parents]))
    assert statuses == [200] * BATCH_OF
    requests = {}
    for _, trace_id in parents:
        named = traced.receiver.wait_for(trace_id, {"POST /v2/models/{model}/infer", "encode"})
        (requests[trace_id],) = named["POST /v2/models/{model}/infer"]
    batches = [
        span
        for trace_id in requests
        for span in traced.receiver.trace(trace_id)
        if span.name == "batch"
    ]
    (batch,) = batches  # one span for the one execution, in its first member's trace
    assert batch.attributes["modelport.batch.size"] == BATCH_OF
    assert batch.attributes["modelport.batch.requests"] == BATCH_OF
    assert sorted(batch.links) == sorted((r.trace_id, r.span_id) for r in requests.values())
    assert batch.parent_id in {request.span_id for request in requests.values()}
    for request in requests.values():
        assert request.links == [(batch.trace_id, batch.span_id)]
        (queued,) = [s for s in traced.receiver.trace(request.trace_id) if s.name == "queue wait"]
        assert queued.parent_id == request.span_id


def test_requests_without_a_traceparent_start_traces_of_their_own(traced: Traced) -> None:
    before = {span.trace_id for span in traced.receiver.spans}
    url = f"{traced.server.base}/v2/models/add_sub/infer"
    assert httpx.post(url, json=ADD_SUB_BODY, headers={"x-request-id": "own-1"}).status_code == 200

    def arrived() -> bool:
        return any(
            span.attributes.get("modelport.request.id") == "own-1" for span in traced.receiver.spans
        )

    wait_until(arrived, "the span of request own-1")
    spans = traced.receiver.spans
    (request,) = [s for s in spans if s.attributes.get("modelport.request.id") == "own-1"]
    assert request.trace_id not in before and request.parent_id == ""
    assert {s.name for s in traced.receiver.trace(request.trace_id)} >= {"decode", "encode"}


def test_health_and_metadata_requests_are_not_traced(traced: Traced, tmp_path: Path) -> None:
    traceparent, trace_id = client_parent(5)
    headers = {"traceparent": traceparent}
    assert httpx.get(f"{traced.server.base}/v2/models/add_sub", headers=headers).status_code == 200
    # a traced request after it: once its spans are in, the metadata request's would be too
    marker_parent, marker_id = client_parent(6)
    url = f"{traced.server.base}/v2/models/add_sub/infer"
    httpx.post(url, json=ADD_SUB_BODY, headers={"traceparent": marker_parent})
    traced.receiver.wait_for(marker_id, {"POST /v2/models/{model}/infer"})
    assert traced.receiver.trace(trace_id) == []
