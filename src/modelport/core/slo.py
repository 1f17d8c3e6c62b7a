"""SLO decisions: a version's recent requests against its model's objectives, and when a canary
goes back to the stable version.

Nothing here reads a clock or acts. The server's loop (operations/alerting.py) reads each
version's window through `WindowSource` (observability/window.py's `WindowStore` implements it),
asks these functions what the numbers mean, and does what they decide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from modelport.core.config import ModelConfig
from modelport.core.manager import STABLE
from modelport.core.slo_config import SloConfig

Objective = Literal["p99_latency", "error_rate"]
OBJECTIVES: tuple[Objective, ...] = ("p99_latency", "error_rate")
ALERT_NAMES: dict[Objective, str] = {
    "p99_latency": "ModelportP99LatencySLO",
    "error_rate": "ModelportErrorRateSLO",
}
"""Alert names, the same in the server's own alerts and in `modelport alerts rules`."""
SEVERITY: dict[Objective, str] = {"p99_latency": "warning", "error_rate": "critical"}
ROLLBACK_ALERT = "ModelportCanaryRolledBack"


class WindowTotalsView(Protocol):
    """What one version did over a window (observability.window.WindowTotals)."""

    @property
    def requests(self) -> int:
        """Requests that succeeded (the latency histogram holds these only)."""
        ...

    @property
    def server_errors(self) -> int:
        """Requests that failed for the server's reasons: unavailable, timeout, internal."""
        ...

    def latency_quantile(self, q: float) -> float | None: ...


class SeriesView(Protocol):
    def totals(self, seconds: float) -> WindowTotalsView: ...


class WindowSource(Protocol):
    """Every model version's recent requests, by (model, version number as text)."""

    def find(self, model: str, version: str) -> SeriesView | None: ...


@dataclass(frozen=True, slots=True)
class Reading:
    """One objective of one version over its window."""

    objective: Objective
    value: float | None
    """Seconds (p99_latency) or a fraction (error_rate); None with no such requests."""
    threshold: float
    requests: int
    """Requests the value is computed over."""
    breached: bool
    """The value is over the threshold and `min_requests` requests back it."""


def read_objectives(slo: SloConfig, totals: WindowTotalsView | None) -> list[Reading]:
    """Each objective the SLO sets, judged on a version's window (None: no requests yet)."""
    readings: list[Reading] = []
    succeeded = totals.requests if totals is not None else 0
    failed = totals.server_errors if totals is not None else 0
    if slo.p99_latency is not None:
        latency = totals.latency_quantile(0.99) if totals is not None and succeeded else None
        readings.append(_judged("p99_latency", latency, slo.p99_latency, succeeded, slo))
    if slo.error_rate is not None:
        completed = succeeded + failed
        rate = failed / completed if completed else None
        readings.append(_judged("error_rate", rate, slo.error_rate, completed, slo))
    return readings


def _judged(
    objective: Objective, value: float | None, threshold: float, requests: int, slo: SloConfig
) -> Reading:
    breached = value is not None and requests >= slo.min_requests and value > threshold
    return Reading(objective, value, threshold, requests, breached)


def format_value(objective: Objective, value: float | None) -> str:
    """'212ms', '1.5s', '19.8%'; 'n/a' without a value."""
    if value is None:
        return "n/a"
    if objective == "error_rate":
        return f"{value * 100:.3g}%"
    if value < 1:
        return f"{value * 1000:.3g}ms"
    return f"{value:.3g}s"


def format_window(seconds: float) -> str:
    """'5m', '10s', '90s', '1h'."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def describe(reading: Reading, window_s: float) -> str:
    """'error_rate 19.8% > 1% over 5m' (or '<=' when within the objective)."""
    relation = ">" if reading.breached else "<="
    return (
        f"{reading.objective} {format_value(reading.objective, reading.value)} {relation} "
        f"{format_value(reading.objective, reading.threshold)} over {format_window(window_s)}"
    )


@dataclass(frozen=True, slots=True)
class RollbackPlan:
    """Move a canary's traffic share back to the stable version."""

    model: str
    canary: int
    stable: int
    traffic: dict[int, float]
    """The split after the rollback: the canary at 0, stable with its share added."""
    cause: Reading
    reason: str
    """'rolled back: error_rate 19.8% > 1% over 5m', shown on the canary's index row."""


def canaries(config: ModelConfig) -> list[int]:
    """Versions with a traffic share that are not the stable version (none without a stable
    label, since there would be nothing to roll back to)."""
    stable = config.labels.get(STABLE)
    if stable is None or stable not in config.traffic:
        return []
    return sorted(v for v, weight in config.traffic.items() if v != stable and weight > 0)


def plan_rollback(
    model: str,
    config: ModelConfig,
    firing: Mapping[int, Sequence[Reading]],
    breached: Mapping[int, bool],
) -> RollbackPlan | None:
    """The rollback to make, if any: a canary whose SLO alert fires (`firing`: per version, the
    readings whose alert fires) while the stable version serves and breaches nothing now
    (`breached`: per READY version). A stable version with too few requests to judge counts as
    meeting its objectives: nothing speaks against it, and it is the version that served before.
    Off with `auto_rollback: false`."""
    slo = config.slo
    if slo is None or not slo.auto_rollback:
        return None
    stable = config.labels.get(STABLE)
    if stable is None or stable not in breached or breached[stable]:
        return None
    for canary in canaries(config):
        causes = [reading for reading in firing.get(canary, ()) if reading.breached]
        if causes:
            cause = causes[0]
            return RollbackPlan(
                model=model,
                canary=canary,
                stable=stable,
                traffic=moved_share(config.traffic, canary, stable),
                cause=cause,
                reason=f"rolled back: {describe(cause, slo.window)}",
            )
    return None


def moved_share(traffic: Mapping[int, float], source: int, target: int) -> dict[int, float]:
    """The split with `source`'s share added to `target`'s and `source` left at 0 (it stays
    loaded, so it can still be asked by version number and its index row shows why)."""
    moved = dict(traffic)
    moved[target] = moved.get(target, 0.0) + moved.get(source, 0.0)
    moved[source] = 0.0
    return moved
