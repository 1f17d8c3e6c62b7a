"""What a traced request reports, declared here so the core never imports OpenTelemetry.

observability/tracing.py implements these protocols with OpenTelemetry spans; a frontend starts a
`ServerTrace` for a sampled request (through `Tracer`) and makes it the current trace while the
request runs, and the data plane and the batcher report the times they measure anyway
(`time.perf_counter_ns()`), so spans are made after the fact with explicit start and end times.
With tracing off (`DataPlane.tracer` None) nothing here is looked at: the hot path checks a
boolean or None once per stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from typing import Literal, Protocol

FrontendName = Literal["rest", "grpc", "tfserving", "queue"]
"""The frontend a request came through (the `modelport.protocol` span attribute)."""


class TracedRun(Protocol):
    """One run of a traced request through a model version's batcher (a pipeline has one per
    step it runs); made by `RequestTrace.run`."""

    def queued(self, start_ns: int, end_ns: int) -> None:
        """The time this request waited in the batcher's queue (the first call only: a member
        of a failed batch that is run again alone reports again)."""

    def batched(
        self,
        members: Sequence[TracedRun],
        start_ns: int,
        end_ns: int,
        compute_ns: int,
        size: int,
        error: str | None,
    ) -> None:
        """Called on the first traced member of a batch, once per execution: the batch ran
        from `start_ns` to `end_ns`, the model's own run took the last `compute_ns` of it, over
        `size` rows; `members` are the batch's traced runs, this one included."""


class RequestTrace(Protocol):
    """What the data plane reports about a sampled request."""

    def decoded(self, start_ns: int, end_ns: int) -> None:
        """The frontend's decode of the request (body to validated arrays)."""

    def run(self, model: str, version: str) -> TracedRun:
        """A run through `model` version `version`'s batcher is about to start."""

    def answered(self, model: str, version: str, batch_size: int, end_ns: int) -> None:
        """The data plane's answer: the version that served it and the rows it had."""


class ServerTrace(RequestTrace, Protocol):
    """A request's trace as the frontend that started it holds it."""

    @property
    def trace_id(self) -> str:
        """32 lowercase hex digits, for the access log."""

    def encoded(self, end_ns: int) -> None:
        """The answer was encoded for the wire (since `answered`)."""

    def finish(self, status: int, error: bool) -> None:
        """End the request's span: `status` is the protocol's (HTTP status code, gRPC status
        code, or a queue reply's HTTP-like status); `error` marks the span as failed."""


class Tracer(Protocol):
    def start(
        self,
        protocol: FrontendName,
        name: str,
        *,
        traceparent: str | None,
        tracestate: str | None,
        request_id: str,
        attributes: dict[str, str | int],
    ) -> ServerTrace | None:
        """A trace for a request, continuing `traceparent` (W3C) when one arrived; None when
        the request is not sampled."""

    def close(self) -> None:
        """Export what is still buffered and stop (blocking: call it off the event loop)."""


CURRENT_TRACE: ContextVar[RequestTrace | None] = ContextVar("modelport_trace", default=None)
"""The trace of the request the current task serves, set by the frontend that started it; the
data plane reads it only when tracing is on."""
