"""Prometheus metrics with their own registry, fed by the core through InferenceObserver.

Families are shared by every frontend (REST and gRPC), labelled by model and
version. Label children are created once per model version, so a request costs a few counter
increments, not label lookups.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from modelport.observability.window import VersionSeries, WindowStore

# The *_created series double the exposition size and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in prometheus_client

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STATES = ("LOADING", "READY", "UNAVAILABLE", "FAILED")


class Metrics:
    """`multiprocess`: one of several server workers (serving.py). Values then live in files
    under PROMETHEUS_MULTIPROC_DIR, which the supervisor sets, and a scrape of any worker sums
    every worker's counters and histograms; gauges are per live worker (a `pid` label).
    `window`: also keep every version's last minutes in process (observability/window.py, what
    the dashboard and the SLOs read), per worker."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        multiprocess: bool = False,
        window: WindowStore | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.window = window
        self._exposition = self.registry
        if multiprocess:
            self._exposition = CollectorRegistry()
            MultiProcessCollector(self._exposition)  # type: ignore[no-untyped-call]  # unannotated
        labels = ("model", "version")
        self.success = Counter(
            "modelport_inference_request_success",
            "Inference requests that succeeded.",
            labels,
            registry=self.registry,
        )
        self.failure = Counter(
            "modelport_inference_request_failure",
            "Inference requests that failed, by error kind.",
            (*labels, "reason"),
            registry=self.registry,
        )
        self.inferences = Counter(
            "modelport_inference_count",
            "Inferences performed (a batch of N counts N).",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelport_request_duration_seconds",
            "Time from a request reaching the core to its response, successful requests only.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute = Histogram(
            "modelport_inference_compute_seconds",
            "Time the runtime spent computing each request.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue = Histogram(
            "modelport_queue_duration_seconds",
            "Time requests waited in their model's queue before running.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "modelport_batch_size",
            "Inferences per run of the model (dynamic batching joins requests).",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "modelport_inflight_requests",
            "Requests inside the server for each model version (queued or running).",
            labels,
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.limited = Counter(
            "modelport_inference_request_limited",
            "Inference requests a model's rate_limit or max_in_flight refused (429), by limit.",
            ("model", "limit"),
            registry=self.registry,
        )
        self.state = Gauge(
            "modelport_model_state",
            "1 for the state each model version is in, 0 for the others.",
            (*labels, "state"),
            registry=self.registry,
            multiprocess_mode="liveall",
        )

    def recorder(self, model: str, version: str) -> VersionMetrics:
        series = self.window.series(model, version) if self.window is not None else None
        return VersionMetrics(self, model, version, series)

    def limit_recorder(self, model: str) -> ModelLimitMetrics:
        return ModelLimitMetrics(self, model)

    def model_state(self, model: str, version: str, state: str) -> None:
        for candidate in STATES:
            self.state.labels(model, version, candidate).set(1 if candidate == state else 0)

    def render(self) -> bytes:
        return generate_latest(self._exposition)


class VersionMetrics:
    """The label children of one model version, bound once at load time."""

    def __init__(
        self, metrics: Metrics, model: str, version: str, series: VersionSeries | None = None
    ) -> None:
        self._metrics = metrics
        self._series = series
        self._labels = (model, version)
        self._success = metrics.success.labels(model, version)
        self._inferences = metrics.inferences.labels(model, version)
        self._latency = metrics.latency.labels(model, version)
        self._compute = metrics.compute.labels(model, version)
        self._queue = metrics.queue.labels(model, version)
        self._batch_size = metrics.batch_size.labels(model, version)
        self._in_flight = metrics.in_flight.labels(model, version)

    def success(self, latency_s: float, compute_s: float, queue_s: float, batch_size: int) -> None:
        self._success.inc()
        self._inferences.inc(batch_size)
        self._latency.observe(latency_s)
        self._compute.observe(compute_s)
        self._queue.observe(queue_s)
        if self._series is not None:
            self._series.success(latency_s, queue_s)

    def execution(self, batch_size: int) -> None:
        self._batch_size.observe(batch_size)
        if self._series is not None:
            self._series.execution(batch_size)

    def in_flight(self, delta: int) -> None:
        self._in_flight.inc(delta)
        if self._series is not None:
            self._series.in_flight(delta)

    def failure(self, latency_s: float, reason: str) -> None:
        self._metrics.failure.labels(*self._labels, reason).inc()
        if self._series is not None:
            self._series.failure(reason)


class ModelLimitMetrics:
    """A model's refusals by limit (per model: the limits are the model's, not a version's)."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._by_limit = {
            limit: metrics.limited.labels(model, limit) for limit in ("rate_limit", "max_in_flight")
        }

    def refused(self, limit: str) -> None:
        self._by_limit[limit].inc()
