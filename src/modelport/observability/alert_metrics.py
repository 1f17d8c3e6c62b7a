"""Alert metrics: each SLO alert's state, canary rollbacks, and what became of webhook
notifications. Label sets are bounded by the served model versions (and three outcomes)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

NOTIFICATION_OUTCOMES = ("delivered", "failed", "dropped")


class AlertMetrics:
    """Implements core.alerts.AlertObserver."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = Gauge(
            "modelport_alert_state",
            "1 while the model version's SLO alert for the objective fires, 0 otherwise.",
            ("model", "version", "slo"),
            registry=registry,
            multiprocess_mode="livemax",  # several workers: firing in any of them
        )
        self.rollbacks = Counter(
            "modelport_canary_rollbacks",
            "Canary versions whose traffic share was moved back to the stable version because "
            "they breached their SLO.",
            ("model", "version"),
            registry=registry,
        )
        self.notifications = Counter(
            "modelport_alert_notifications",
            "Alert webhook notifications by outcome: delivered, failed (given up after its "
            "retries), dropped (the webhook's queue was full).",
            ("outcome",),
            registry=registry,
        )
        self._outcomes = {
            outcome: self.notifications.labels(outcome) for outcome in NOTIFICATION_OUTCOMES
        }

    def alert_state(self, model: str, version: str, slo: str, firing: bool) -> None:
        self.state.labels(model, version, slo).set(1 if firing else 0)

    def rolled_back(self, model: str, version: str) -> None:
        self.rollbacks.labels(model, version).inc()

    def notification(self, outcome: str) -> None:
        self._outcomes[outcome].inc()
