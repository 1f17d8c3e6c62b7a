"""Alert state: which SLO alerts are pending, firing or lately resolved, and the canary rollbacks
made, as `GET /v2/alerts` reports them.

An alert is pending from the first evaluation that finds its objective breached, fires once the
breach has held for its `for` (and at the earliest at the next evaluation, so one bad moment does
not page anyone), and is resolved at the first evaluation that finds it within its objective.
The server's SLO loop (operations/alerting.py) feeds it, passing the time in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol, TypedDict

from modelport.core.slo import (
    ALERT_NAMES,
    ROLLBACK_ALERT,
    SEVERITY,
    Objective,
    Reading,
    RollbackPlan,
    describe,
    format_value,
    format_window,
)

AlertState = Literal["pending", "firing", "resolved"]
RESOLVED_KEPT = 100
ROLLBACKS_KEPT = 50


class AlertView(TypedDict):
    """One alert in /v2/alerts. `value` and `threshold` are seconds for p99_latency and
    fractions (0.01 = 1 %) for error_rate."""

    name: str
    model: str
    version: str
    slo: str
    state: str
    value: float | None
    threshold: float
    window_s: float
    since: str
    ended: str | None
    summary: str


class RollbackView(TypedDict):
    model: str
    from_version: str
    to_version: str
    reason: str
    at: str


class AlertsReport(TypedDict):
    alerts: list[AlertView]
    """Firing first (oldest first), then the recently resolved (newest first)."""
    rollbacks: list[RollbackView]
    """Newest first."""


class AlertBoard(Protocol):
    """What GET /v2/alerts reads."""

    def report(self) -> AlertsReport: ...


class AlertObserver(Protocol):
    """Receives alert states and what became of notifications (observability implements it)."""

    def alert_state(self, model: str, version: str, slo: str, firing: bool) -> None: ...

    def rolled_back(self, model: str, version: str) -> None: ...

    def notification(self, outcome: str) -> None:
        """'delivered', 'failed' (given up on) or 'dropped' (the queue was full)."""
        ...


def rfc3339(wall: float) -> str:
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


@dataclass(slots=True)
class Alert:
    name: str
    model: str
    version: str
    objective: Objective
    threshold: float
    window_s: float
    state: AlertState
    value: float | None
    pending_since: float
    """Monotonic seconds of the evaluation that first saw the breach."""
    since: float
    """Wall time it started firing (while pending: when the breach was first seen)."""
    ended: float | None = None
    summary: str = ""
    description: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.name, self.model, self.version)

    @property
    def labels(self) -> dict[str, str]:
        return {
            "alertname": self.name,
            "model": self.model,
            "version": self.version,
            "slo": self.objective,
            "severity": SEVERITY[self.objective],
        }

    def view(self) -> AlertView:
        return {
            "name": self.name,
            "model": self.model,
            "version": self.version,
            "slo": self.objective,
            "state": self.state,
            "value": self.value,
            "threshold": self.threshold,
            "window_s": self.window_s,
            "since": rfc3339(self.since),
            "ended": None if self.ended is None else rfc3339(self.ended),
            "summary": self.summary,
        }


class AlertBook:
    """Alerts by (name, model, version); resolved alerts and rollbacks are kept, bounded."""

    def __init__(self, *, resolved_kept: int = RESOLVED_KEPT, rollbacks_kept: int = ROLLBACKS_KEPT):
        self._active: dict[tuple[str, str, str], Alert] = {}
        self._resolved: deque[Alert] = deque(maxlen=resolved_kept)
        self._rollbacks: deque[tuple[RollbackPlan, float]] = deque(maxlen=rollbacks_kept)

    def observe(
        self,
        model: str,
        version: str,
        reading: Reading,
        window_s: float,
        hold_s: float,
        now: float,
        wall: float,
    ) -> Alert | None:
        """Take one evaluation's reading; returns the alert when it started firing or was
        resolved (what a notification is sent for)."""
        key = (ALERT_NAMES[reading.objective], model, version)
        alert = self._active.get(key)
        if not reading.breached:
            if alert is None:
                return None
            if alert.state == "pending":
                del self._active[key]
                return None
            alert.value = reading.value
            self._end(alert, wall, _back_within(alert, reading))
            return alert
        if alert is None:
            alert = self._active[key] = Alert(
                key[0],
                model,
                version,
                reading.objective,
                reading.threshold,
                window_s,
                "pending",
                reading.value,
                pending_since=now,
                since=wall,
            )
        alert.value = reading.value
        alert.summary = f"{model} version {version}: {describe(reading, window_s)}"
        alert.description = _description(model, version, reading, window_s)
        held = now - alert.pending_since
        if alert.state == "pending" and held > 0 and held >= hold_s:
            alert.state = "firing"
            alert.since = wall
            return alert
        return None

    def fire_rollback(self, plan: RollbackPlan, window_s: float, wall: float, now: float) -> Alert:
        """A canary was rolled back: an alert that fires while the rollback stands."""
        self._rollbacks.append((plan, wall))
        alert = Alert(
            ROLLBACK_ALERT,
            plan.model,
            str(plan.canary),
            plan.cause.objective,
            plan.cause.threshold,
            window_s,
            "firing",
            plan.cause.value,
            pending_since=now,
            since=wall,
            summary=f"{plan.model} version {plan.canary} {plan.reason}; its traffic share went "
            f"to stable version {plan.stable}",
            description=f"{plan.model} version {plan.canary} breached its SLO "
            f"({describe(plan.cause, window_s)}) while stable version {plan.stable} met it, so "
            f"its traffic share was moved back to version {plan.stable} (config.yaml changed). "
            "Give it a share again to end this alert.",
        )
        self._active[alert.key] = alert
        return alert

    def resolve_where(
        self, ended: Callable[[Alert], bool], wall: float, why: str
    ) -> Iterator[Alert]:
        """Resolve the active alerts `ended` picks (a version no longer served, an SLO removed,
        a rollback undone); yields those that were firing."""
        for alert in [a for a in self._active.values() if ended(a)]:
            if alert.state == "pending":
                del self._active[alert.key]
                continue
            self._end(alert, wall, f"{alert.model} version {alert.version}: {why}")
            yield alert

    def _end(self, alert: Alert, wall: float, summary: str) -> None:
        del self._active[alert.key]
        alert.state = "resolved"
        alert.ended = wall
        alert.summary = summary
        self._resolved.append(alert)

    def active(self) -> list[Alert]:
        return list(self._active.values())

    def firing(self, model: str, version: str) -> list[Alert]:
        return [
            a
            for a in self._active.values()
            if a.state == "firing" and a.model == model and a.version == version
        ]

    def rollbacks(self) -> list[tuple[RollbackPlan, float]]:
        return list(self._rollbacks)

    def report(self) -> AlertsReport:
        firing = sorted(
            (a for a in self._active.values() if a.state == "firing"), key=lambda a: a.since
        )
        return {
            "alerts": [a.view() for a in firing] + [a.view() for a in reversed(self._resolved)],
            "rollbacks": [
                {
                    "model": plan.model,
                    "from_version": str(plan.canary),
                    "to_version": str(plan.stable),
                    "reason": plan.reason,
                    "at": rfc3339(wall),
                }
                for plan, wall in reversed(self._rollbacks)
            ],
        }


def _back_within(alert: Alert, reading: Reading) -> str:
    now = format_value(reading.objective, reading.value)
    return (
        f"{alert.model} version {alert.version}: {reading.objective} back within "
        f"{format_value(reading.objective, reading.threshold)} over "
        f"{format_window(alert.window_s)} (now {now}, {reading.requests} requests)"
    )


def _description(model: str, version: str, reading: Reading, window_s: float) -> str:
    window = format_window(window_s)
    value = format_value(reading.objective, reading.value)
    threshold = format_value(reading.objective, reading.threshold)
    if reading.objective == "p99_latency":
        return (
            f"The 99th percentile latency of the {reading.requests} successful requests to "
            f"{model} version {version} over the last {window} is {value}; the objective is "
            f"{threshold}."
        )
    return (
        f"{value} of the {reading.requests} requests to {model} version {version} over the "
        f"last {window} failed for the server's reasons (unavailable, timeout, internal); the "
        f"objective is {threshold}."
    )
