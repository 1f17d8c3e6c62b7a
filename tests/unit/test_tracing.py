"""Traces in process: the real DataPlane and batcher over fake models, traced by the real
OpenTelemetry tracer into OpenTelemetry's InMemorySpanExporter; requests are started the way
the frontends start them (`Tracer.start`, then the trace made current for the request's task).
Also: sampling decisions, tracing off touching nothing, and the missing extra refused."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from modelport import settings as settings_module
from modelport.core.data_plane import DataPlane
from modelport.core.errors import InferenceFailed
from modelport.core.tracing import CURRENT_TRACE, ServerTrace
from modelport.core.validate import InputGuard, ValidatedRequest
from modelport.observability.tracing import OtelTracer
from modelport.settings import ServerSettings
from tests.fakes import Core, batch, make_core

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
BATCHING = {"dynamic_batching": {"max_batch_size": 3, "max_queue_delay": "30s"}}
"""Three one-row requests fill a batch; the long delay keeps fewer from leaving alone."""


def traced_plane(
    scenario: Callable[[Core, DataPlane, OtelTracer], Awaitable[Any]],
    config: dict[str, Any] | None = None,
    ratio: float = 1.0,
) -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer = OtelTracer(ratio, SimpleSpanProcessor(exporter))

    async def main() -> Any:
        core = make_core()
        core.source.put("m", (1,), config)
        plane = DataPlane(core.manager, tracer=tracer)
        await plane.start()
        try:
            return await scenario(core, plane, tracer)
        finally:
            await plane.close()

    result = asyncio.run(main())
    tracer.close()
    return result, exporter


def decode_x(guard: InputGuard) -> ValidatedRequest:
    builder = guard.builder("m", None)
    builder.declare("x", "FP32", [1, 2])
    builder.add("x", batch(1))
    return builder.finish(request_id="r")


async def serve_one(
    plane: DataPlane, tracer: OtelTracer, request_id: str, traceparent: str | None = None
) -> ServerTrace | None:
    """What a frontend does for one request: start its trace, run it, encode, finish."""
    trace = tracer.start(
        "rest",
        "POST /v2/models/{model}/infer",
        traceparent=traceparent,
        tracestate="vendor=opaque" if traceparent else None,
        request_id=request_id,
        attributes={"http.request.method": "POST"},
    )
    CURRENT_TRACE.set(trace)  # this task's own context, as in the frontends
    status = 200
    try:
        await plane.infer(plane.resolve("m"), decode_x)
        if trace is not None:
            trace.encoded(time.perf_counter_ns())
    except InferenceFailed:
        status = 500
    if trace is not None:
        trace.finish(status, status >= 500)
    return trace


def by_name(spans: list[ReadableSpan], trace_id: int) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        assert span.context is not None
        if span.context.trace_id == trace_id:
            named.setdefault(span.name, []).append(span)
    return named


def test_a_batch_of_three_requests_is_one_span_linked_to_each_request() -> None:
    async def scenario(core: Core, plane: DataPlane, tracer: OtelTracer) -> list[Any]:
        parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
        return await asyncio.gather(
            serve_one(plane, tracer, "first", parent),
            serve_one(plane, tracer, "second"),
            serve_one(plane, tracer, "third"),
        )

    traces, exporter = traced_plane(scenario, BATCHING)
    spans = list(exporter.get_finished_spans())
    assert all(trace is not None for trace in traces)
    requests = {}
    for trace in traces:
        assert trace is not None
        trace_id = int(trace.trace_id, 16)
        named = by_name(spans, trace_id)
        (request,) = named.pop("POST /v2/models/{model}/infer")
        requests[request.attributes["modelport.request.id"]] = request
        assert request.kind is SpanKind.SERVER
        assert request.attributes["modelport.model.name"] == "m"
        assert request.attributes["modelport.model.version"] == "1"
        assert request.attributes["modelport.protocol"] == "rest"
        assert request.attributes["modelport.batch.size"] == 1
        assert request.attributes["http.response.status_code"] == 200
        assert request.status.status_code is StatusCode.UNSET
        for stage in ("decode", "queue wait", "encode"):
            (span,) = named.pop(stage)
            assert span.parent is not None and span.context is not None
            assert span.parent.span_id == request.context.span_id, stage
            assert request.start_time <= span.start_time <= span.end_time <= request.end_time
        assert set(named) <= {"batch", "compute"}  # in the trace of the batch's first member
    # the client's traceparent is continued: its trace id, its span as the parent, its state
    first = requests["first"]
    assert first.context.trace_id == int(CLIENT_TRACE, 16)
    assert first.parent is not None and first.parent.span_id == int(CLIENT_SPAN, 16)
    assert first.parent.is_remote
    assert first.context.trace_state.get("vendor") == "opaque"
    # one batch span in all: under the first member's request, linked to each member's request
    (batch_span,) = [span for span in spans if span.name == "batch"]
    (compute,) = [span for span in spans if span.name == "compute"]
    assert batch_span.context.trace_id == first.context.trace_id
    assert batch_span.parent is not None and batch_span.parent.span_id == first.context.span_id
    linked = {link.context.span_id for link in batch_span.links}
    assert linked == {request.context.span_id for request in requests.values()}
    assert batch_span.attributes["modelport.batch.size"] == 3
    assert batch_span.attributes["modelport.batch.requests"] == 3
    assert batch_span.attributes["modelport.model.name"] == "m"
    assert compute.parent is not None and compute.parent.span_id == batch_span.context.span_id
    assert compute.attributes["modelport.batch.size"] == 3
    assert batch_span.start_time <= compute.start_time <= compute.end_time <= batch_span.end_time
    # and every request's span links back to the batch it joined
    for request in requests.values():
        assert [link.context.span_id for link in request.links] == [batch_span.context.span_id]
    # each queue wait ends where the batch began
    for span in spans:
        if span.name == "queue wait":
            assert span.end_time == batch_span.start_time


def test_a_failed_batch_is_marked_failed_and_so_is_the_request() -> None:
    async def scenario(core: Core, plane: DataPlane, tracer: OtelTracer) -> Any:
        core.runtimes.failing_runs.add("m-1")
        return await serve_one(plane, tracer, "doomed")

    trace, exporter = traced_plane(scenario)
    assert trace is not None
    named = by_name(list(exporter.get_finished_spans()), int(trace.trace_id, 16))
    (request,) = named["POST /v2/models/{model}/infer"]
    assert request.status.status_code is StatusCode.ERROR
    assert request.attributes["http.response.status_code"] == 500
    (batch_span,) = named["batch"]
    assert batch_span.status.status_code is StatusCode.ERROR
    assert "the fake model broke" in (batch_span.status.description or "")
    assert "compute" not in named and "encode" not in named


@pytest.mark.parametrize(
    ("traceparent", "ratio", "traced"),
    [
        (f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", 0.0, True),  # a sampled parent is followed
        (f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00", 1.0, False),  # so is an unsampled one
        ("00-not-a-valid-header-01", 0.0, False),  # an invalid one is ignored: the ratio
        ("00-not-a-valid-header-01", 1.0, True),
        (None, 0.0, False),
        (None, 1.0, True),
    ],
)
def test_sampling_follows_the_parent_else_the_ratio(
    traceparent: str | None, ratio: float, traced: bool
) -> None:
    async def scenario(core: Core, plane: DataPlane, tracer: OtelTracer) -> Any:
        return await serve_one(plane, tracer, "r", traceparent)

    trace, exporter = traced_plane(scenario, ratio=ratio)
    assert (trace is not None) is traced
    assert bool(exporter.get_finished_spans()) is traced


def test_without_a_tracer_the_data_plane_never_reads_the_current_trace() -> None:
    class Exploding:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"tracing is off, yet the trace's {name} was used")

    async def main() -> None:
        core = make_core()
        core.source.put("m", (1,))
        plane = DataPlane(core.manager)
        await plane.start()
        CURRENT_TRACE.set(Exploding())  # type: ignore[arg-type]
        try:
            response = await plane.infer(plane.resolve("m"), decode_x)
            np.testing.assert_array_equal(response.outputs["y"], batch(1) * 2)
        finally:
            await plane.close()

    asyncio.run(main())


def test_tracing_without_the_extra_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "_tracing_available", lambda: False)
    for flags in ({"trace_sample_ratio": 0.5}, {"otlp_endpoint": "http://127.0.0.1:4318"}):
        with pytest.raises(ValidationError, match=r"pip install 'modelport\[tracing\]'"):
            ServerSettings(**flags)  # type: ignore[arg-type]
    assert ServerSettings().trace_sample_ratio == 0.0


def test_an_otlp_endpoint_must_be_an_http_url() -> None:
    with pytest.raises(ValidationError, match="http:// or https:// URL"):
        ServerSettings(otlp_endpoint="collector:4318")


OFF_BY_DEFAULT = textwrap.dedent(
    """
    import asyncio, sys
    import httpx
    from modelport.app import build
    from modelport.settings import ServerSettings

    async def main():
        app = build(ServerSettings(model_repository=sys.argv[1])).http
        started = asyncio.Event()
        stop = asyncio.Event()
        messages = asyncio.Queue()
        await messages.put({"type": "lifespan.startup"})

        async def receive():
            message = await messages.get()
            return message

        async def send(message):
            if message["type"] == "lifespan.startup.complete":
                started.set()
            if message["type"] == "lifespan.shutdown.complete":
                stop.set()

        life = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"},
                                        "state": {}}, receive, send))
        await started.wait()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for _ in range(600):
                if (await client.get("/v2/health/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            body = {"inputs": [
                {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16},
                {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [2.0] * 16}]}
            headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
            answer = await client.post("/v2/models/add_sub/infer", json=body, headers=headers)
            assert answer.status_code == 200, answer.text
        await messages.put({"type": "lifespan.shutdown"})
        await stop.wait()
        await life
        loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
        print("OPENTELEMETRY:", loaded)

    asyncio.run(main())
    """
)


def test_tracing_off_by_default_never_imports_opentelemetry(tmp_path: Any) -> None:
    """A server built with the default settings answers a request that even carries a sampled
    traceparent without loading OpenTelemetry at all (in a fresh interpreter)."""
    from modelport.examples import onnx_models
    from tests.support import add_model

    add_model(tmp_path, "add_sub", onnx_models.add_sub("FP32", 16))
    result = subprocess.run(
        [sys.executable, "-c", OFF_BY_DEFAULT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "OPENTELEMETRY: []" in result.stdout, result.stdout + result.stderr


def test_a_queue_message_continues_its_traceparent_field_and_gets_an_access_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from modelport.frontends.off_loop import OffLoop
    from modelport.frontends.queue.endpoint import parse_endpoint
    from modelport.frontends.queue.processor import QueueProcessor
    from tests.unit.test_queue_processor import Counts, FakeDelivery, FakeTransport, request

    async def scenario(core: Core, plane: DataPlane, tracer: OtelTracer) -> Any:
        transport = FakeTransport()
        endpoint = parse_endpoint("redis://h/0")
        processor = QueueProcessor(plane, transport, endpoint, Counts(), OffLoop())
        parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
        delivery = FakeDelivery(request(request_id="q1", traceparent=parent))
        with caplog.at_level(logging.INFO, logger="modelport.access"):
            assert await processor.process(delivery) is None
        return transport.replies

    replies, exporter = traced_plane(scenario)
    assert [reply.status for _, reply in replies] == [200]
    named = by_name(list(exporter.get_finished_spans()), int(CLIENT_TRACE, 16))
    (message,) = named.pop("process modelport.requests")
    assert message.kind is SpanKind.CONSUMER
    assert message.parent is not None and message.parent.span_id == int(CLIENT_SPAN, 16)
    assert message.attributes["messaging.system"] == "redis"
    assert message.attributes["messaging.destination.name"] == "modelport.requests"
    assert message.attributes["modelport.protocol"] == "queue"
    assert message.attributes["modelport.reply.status_code"] == 200
    assert message.attributes["modelport.request.id"] == "q1"
    assert set(named) == {"decode", "queue wait", "batch", "compute", "encode"}
    (line,) = [r for r in caplog.records if r.name == "modelport.access"]
    assert (line.protocol, line.path, line.status) == ("queue", "modelport.requests", 200)
    assert (line.model, line.request_id, line.client) == ("m", "q1", "redis")
    assert line.trace_id == CLIENT_TRACE
