"""OpenTelemetry traces of sampled requests: core/tracing.py's protocols, made of SDK spans.

Imported only when `--trace-sample-ratio` is above 0 (app.py), so a server without tracing never
loads OpenTelemetry. Each sampled request gets one span from its frontend (kind SERVER, or
CONSUMER for a queue message), continuing a W3C `traceparent` (and its `tracestate`) when one
arrived, and children made from the times the data plane and the batcher measured: `decode`,
`queue wait`, `encode`, and per batch execution one `batch` span (child of its first traced
member, linked to every member's request span, each of which links back to it) with a `compute`
child for the model's own run.

Every span is known complete when it is made (its start and end were measured already), so it is
built as the SDK's finished span (`ReadableSpan`, what exporters receive) and handed straight to
the span processor, skipping the live-span machinery (sampler, locks, attribute checks of
`Tracer.start_span`): the 5-6 spans of a request cost about 88 us through `start_span` and about
a third of that this way (a timeit loop, the exporter's own encoding not counted). The sampling
decision is ours (`OtelTracer`), taken before anything is made. Spans leave through a
BatchSpanProcessor: exporting runs on its thread and never waits on a request (a full buffer
drops spans, it does not block). Span limits (attribute counts and lengths) do not apply: every
attribute here is one of ours, short and few.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from modelport.__about__ import __version__
from modelport.core.tracing import FrontendName, TracedRun

DECODE = "decode"
QUEUE_WAIT = "queue wait"
BATCH = "batch"
COMPUTE = "compute"
ENCODE = "encode"

MODEL = "modelport.model.name"
VERSION = "modelport.model.version"
PROTOCOL = "modelport.protocol"
REQUEST_ID = "modelport.request.id"
BATCH_SIZE = "modelport.batch.size"
"""Rows: of the request on its own span, of the whole batch on the batch and compute spans."""
BATCH_REQUESTS = "modelport.batch.requests"
REPLY_STATUS = "modelport.reply.status_code"
"""A queue reply's status (HTTP's numbers, as the REST API would have answered)."""
LINK_ROLE = "modelport.link"
_STATUS_ATTRIBUTE = {
    "rest": "http.response.status_code",
    "tfserving": "http.response.status_code",
    "grpc": "rpc.grpc.status_code",
    "queue": REPLY_STATUS,
}
_KIND = {"queue": SpanKind.CONSUMER}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.UNSET)
_FAILED = Status(StatusCode.ERROR)
TRACES_PATH = "/v1/traces"
CLOCK_REFRESH_NS = 1_000_000_000
"""How often the wall clock's offset from perf_counter is read again (it drifts, NTP slews it);
between two readings every span shares one offset, so spans of different requests line up."""

log = logging.getLogger("modelport.tracing")


def otlp_tracer(ratio: float, endpoint: str | None) -> OtelTracer:
    """The server's tracer: OTLP over HTTP/protobuf to `endpoint` (a bare `http://host:port`
    gets OTLP's `/v1/traces`; None: the exporter's default or OTEL_EXPORTER_OTLP_* variables)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if endpoint is not None and urlsplit(endpoint).path in ("", "/"):
        endpoint = endpoint.rstrip("/") + TRACES_PATH
    where = "the OTLP exporter's default endpoint"
    if endpoint is not None:
        parts = urlsplit(endpoint)  # no user or password in the log
        where = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
        where += parts.path
    log.info("tracing %g%% of requests, exported over OTLP/HTTP to %s", ratio * 100, where)
    return OtelTracer(ratio, BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=5)))


class _Spans:
    """Where finished spans go, with what every span of this server carries."""

    __slots__ = ("processor", "resource", "scope")

    def __init__(self, processor: SpanProcessor) -> None:
        self.processor = processor
        self.resource = Resource.create(
            {"service.name": "modelport", "service.version": __version__}
        )
        self.scope = InstrumentationScope("modelport", __version__)

    def emit(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        start_ns: int,
        end_ns: int,
        attributes: dict[str, str | int],
        *,
        links: Sequence[Link] = (),
        kind: SpanKind = SpanKind.INTERNAL,
        status: Status = _OK,
    ) -> None:
        span = ReadableSpan(
            name,
            context,
            parent,
            self.resource,
            attributes,
            (),
            links,
            kind,
            None,
            status,
            start_ns,
            end_ns,
            self.scope,
        )
        self.processor.on_end(span)


class OtelTracer:
    """core.tracing.Tracer. Sampling is parent-based: a `traceparent` whose sampled flag is set
    is traced, one whose flag is clear is not, and a request without a (valid) one is traced
    with probability `ratio`. An unsampled request costs one random draw."""

    def __init__(self, ratio: float, processor: SpanProcessor) -> None:
        self._spans = _Spans(processor)
        self._ratio = ratio
        self._propagator = TraceContextTextMapPropagator()
        self._offset = 0
        self._offset_read = -CLOCK_REFRESH_NS

    def start(
        self,
        protocol: FrontendName,
        name: str,
        *,
        traceparent: str | None,
        tracestate: str | None,
        request_id: str,
        attributes: dict[str, str | int],
    ) -> RequestSpans | None:
        parent = None
        if traceparent is not None:
            carrier = {"traceparent": traceparent}
            if tracestate is not None:
                carrier["tracestate"] = tracestate
            remote = trace.get_current_span(self._propagator.extract(carrier)).get_span_context()
            if remote.is_valid:  # an invalid one is ignored, as W3C Trace Context says
                if not remote.trace_flags.sampled:
                    return None
                parent = remote
        if parent is None and random.random() >= self._ratio:
            return None
        attributes[PROTOCOL] = protocol
        attributes[REQUEST_ID] = request_id
        now = time.perf_counter_ns()
        if now - self._offset_read >= CLOCK_REFRESH_NS:
            self._offset = time.time_ns() - time.perf_counter_ns()
            self._offset_read = now
        return RequestSpans(self._spans, protocol, name, parent, attributes, now, self._offset)

    def close(self) -> None:
        self._spans.processor.shutdown()


def _new_id() -> int:
    return random.getrandbits(64) or 1  # 0 is the invalid span id


class RequestSpans:
    """core.tracing.ServerTrace: one request's span (emitted at `finish`) and its children."""

    __slots__ = (
        "_answered_ns",
        "_attributes",
        "_kind",
        "_links",
        "_name",
        "_offset",
        "_parent",
        "_spans",
        "_start_ns",
        "_status_attribute",
        "context",
    )

    def __init__(
        self,
        spans: _Spans,
        protocol: FrontendName,
        name: str,
        parent: SpanContext | None,
        attributes: dict[str, str | int],
        start_ns: int,
        offset_ns: int,
    ) -> None:
        """`start_ns`: perf_counter_ns() at the start; `offset_ns`: what turns such times into
        the wall clock's."""
        self._spans = spans
        self._name = name
        self._kind = _KIND.get(protocol, SpanKind.SERVER)
        self._status_attribute = _STATUS_ATTRIBUTE[protocol]
        self._parent = parent
        if parent is None:
            trace_id = random.getrandbits(128) or 1
            self.context = SpanContext(trace_id, _new_id(), False, _SAMPLED)
        else:
            self.context = SpanContext(
                parent.trace_id, _new_id(), False, _SAMPLED, parent.trace_state
            )
        self._attributes = attributes
        self._links: list[Link] = []
        """Links to the batches this request joined."""
        self._start_ns = start_ns + offset_ns
        self._offset = offset_ns
        self._answered_ns = 0

    @property
    def trace_id(self) -> str:
        return trace.format_trace_id(self.context.trace_id)

    def decoded(self, start_ns: int, end_ns: int) -> None:
        self.child(DECODE, start_ns, end_ns, {})

    def run(self, model: str, version: str) -> BatchRun:
        return BatchRun(self, model, version)

    def answered(self, model: str, version: str, batch_size: int, end_ns: int) -> None:
        attributes = self._attributes
        attributes[MODEL] = model
        attributes[VERSION] = version
        attributes[BATCH_SIZE] = batch_size
        self._answered_ns = end_ns

    def encoded(self, end_ns: int) -> None:
        if self._answered_ns:
            self.child(ENCODE, self._answered_ns, end_ns, {})
            self._answered_ns = 0  # once: a stream's later answers report no second encode

    def finish(self, status: int, error: bool) -> None:
        self._attributes[self._status_attribute] = status
        self._spans.emit(
            self._name,
            self.context,
            self._parent,
            self._start_ns,
            time.perf_counter_ns() + self._offset,
            self._attributes,
            links=self._links,
            kind=self._kind,
            status=_FAILED if error else _OK,
        )

    def child(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        attributes: dict[str, str | int],
        *,
        parent: SpanContext | None = None,
        context: SpanContext | None = None,
        links: Sequence[Link] = (),
        status: Status = _OK,
    ) -> SpanContext:
        """A span under this request's (or under `parent`), from the core's times."""
        own = self.context
        if context is None:
            context = SpanContext(own.trace_id, _new_id(), False, _SAMPLED, own.trace_state)
        offset = self._offset
        self._spans.emit(
            name,
            context,
            own if parent is None else parent,
            start_ns + offset,
            end_ns + offset,
            attributes,
            links=links,
            status=status,
        )
        return context

    def link_batch(self, batch: SpanContext) -> None:
        """Point this request's span at a batch it joined (once per batch)."""
        if all(link.context.span_id != batch.span_id for link in self._links):
            self._links.append(Link(batch, {LINK_ROLE: BATCH}))


class BatchRun:
    """core.tracing.TracedRun: a request's run through one version's batcher."""

    __slots__ = ("_queued", "model", "request", "version")

    def __init__(self, request: RequestSpans, model: str, version: str) -> None:
        self.request = request
        self.model = model
        self.version = version
        self._queued = False

    def queued(self, start_ns: int, end_ns: int) -> None:
        if not self._queued:
            self._queued = True
            attributes: dict[str, str | int] = {MODEL: self.model, VERSION: self.version}
            self.request.child(QUEUE_WAIT, start_ns, end_ns, attributes)

    def batched(
        self,
        members: Sequence[TracedRun],
        start_ns: int,
        end_ns: int,
        compute_ns: int,
        size: int,
        error: str | None,
    ) -> None:
        runs = [run for run in members if isinstance(run, BatchRun)]
        requests = list({id(run.request): run.request for run in runs}.values())
        owner = self.request
        own = owner.context
        batch = SpanContext(own.trace_id, _new_id(), False, _SAMPLED, own.trace_state)
        attributes: dict[str, str | int] = {
            MODEL: self.model,
            VERSION: self.version,
            BATCH_SIZE: size,
            BATCH_REQUESTS: len(runs),
        }
        if error is None and compute_ns:
            owner.child(COMPUTE, end_ns - compute_ns, end_ns, attributes, parent=batch)
        owner.child(
            BATCH,
            start_ns,
            end_ns,
            attributes,
            context=batch,
            links=[Link(request.context, {LINK_ROLE: "member"}) for request in requests],
            status=_OK if error is None else Status(StatusCode.ERROR, error),
        )
        for request in requests:
            request.link_batch(batch)
