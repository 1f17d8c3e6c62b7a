"""Metrics of the queue frontend, one set of label children per queue (--queue URL).

The model's own request metrics (modelport_inference_*) count queue requests like any other;
these count what only a broker has: messages received, replies by status, retries, dead
letters, requests in flight, the connection, and the time from receipt to reply.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from modelport.observability.metrics import LATENCY_BUCKETS, Metrics


class QueueMetricFamilies:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("queue",)
        self.received = Counter(
            "modelport_broker_messages_received",
            "Messages taken from the broker.",
            labels,
            registry=registry,
        )
        self.replied = Counter(
            "modelport_broker_replies",
            "Replies the broker accepted, by the HTTP status they carry.",
            (*labels, "status"),
            registry=registry,
        )
        self.retried = Counter(
            "modelport_broker_retries",
            "Requests handed back for another attempt after a transient failure.",
            labels,
            registry=registry,
        )
        self.dead = Counter(
            "modelport_broker_dead_letters",
            "Messages moved to the dead letters (unreadable, or out of attempts).",
            labels,
            registry=registry,
        )
        self.in_flight = Gauge(
            "modelport_broker_in_flight",
            "Requests of the queue being answered now.",
            labels,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.connected = Gauge(
            "modelport_broker_connected",
            "1 while the queue's broker connection is up.",
            labels,
            registry=registry,
            multiprocess_mode="liveall",
        )
        self.lost = Counter(
            "modelport_broker_connections_lost",
            "Times the queue's broker connection was lost (or could not be made) and retried.",
            labels,
            registry=registry,
        )
        self.seconds = Histogram(
            "modelport_broker_processing_seconds",
            "Time from taking a message to the broker accepting its reply.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


class QueueMetrics:
    """A QueueObserver (frontends/queue/processor.py) for one queue."""

    def __init__(self, families: QueueMetricFamilies, queue: str) -> None:
        self._families = families
        self._queue = queue
        self._received = families.received.labels(queue)
        self._retried = families.retried.labels(queue)
        self._dead = families.dead.labels(queue)
        self._in_flight = families.in_flight.labels(queue)
        self._connected = families.connected.labels(queue)
        self._lost = families.lost.labels(queue)
        self._seconds = families.seconds.labels(queue)

    def received(self) -> None:
        self._received.inc()

    def replied(self, status: int, seconds: float) -> None:
        self._families.replied.labels(self._queue, str(status)).inc()
        self._seconds.observe(seconds)

    def retried(self) -> None:
        self._retried.inc()

    def dead_lettered(self) -> None:
        self._dead.inc()

    def in_flight(self, delta: int) -> None:
        self._in_flight.inc(delta)

    def connected(self, up: bool) -> None:
        self._connected.set(1 if up else 0)

    def connection_lost(self) -> None:
        self._lost.inc()


def queue_metrics(metrics: Metrics) -> QueueMetricFamilies:
    return QueueMetricFamilies(metrics.registry)
