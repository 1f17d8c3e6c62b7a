"""What `GET /dashboard/api/series` answers: every model and version with its state, labels and
traffic share, failed loads with their reasons, and each version's recent points from the
in-process window (observability/window.py).

The page polls it every 2 s. To keep that cheap it passes `since`, the time of the newest
point it has, and gets only the points after it: the points cover whole steps of the window's
clock (`timeline(whole_steps=True)`), so a point once sent never changes and a poll usually
reads one point per version or none.
"""

from __future__ import annotations

import math
from typing import TypedDict

from modelport.core.views import IndexRow
from modelport.observability.window import SLOTS, Timeline, VersionSeries, WindowStore

DEFAULT_STEP = 5
MAX_STEP = 60
BENIGN_REASONS = frozenset({"", "not loaded", "unloaded"})
"""Reasons of a model without versions that are no failure: explicit mode, an unload."""


class SeriesPoints(TypedDict):
    """One version's points, oldest first; `time` is each point's last second (Unix time)."""

    time: list[float]
    requests_per_second: list[float]
    error_rate: list[float | None]
    p50_ms: list[float | None]
    p99_ms: list[float | None]
    queue_depth: list[int]
    batch_size: list[float | None]


class VersionView(TypedDict):
    version: str
    state: str
    reason: str
    labels: list[str]
    traffic: float | None
    series: SeriesPoints | None
    """None: the window holds nothing for it (it never loaded)."""


class ModelView(TypedDict):
    name: str
    state: str | None
    """The model's own state when it has no version (not loaded, a config error)."""
    reason: str
    versions: list[VersionView]


class Failure(TypedDict):
    model: str
    version: str | None
    reason: str


class Component(TypedDict):
    """A row the index has for something that is no model (a queue's broker connection)."""

    name: str
    state: str
    reason: str


class SeriesDocument(TypedDict):
    step: int
    history_s: int
    alerts: bool
    """Whether GET /v2/alerts exists on this server."""
    models: list[ModelView]
    failures: list[Failure]
    components: list[Component]


def series_document(
    rows: list[IndexRow],
    window: WindowStore | None,
    *,
    step: int = DEFAULT_STEP,
    since: float | None = None,
    alerts: bool = False,
) -> SeriesDocument:
    """The answer for the index `rows` (DataPlane.repository_index) and the `window`."""
    models: dict[str, ModelView] = {}
    failures: list[Failure] = []
    components: list[Component] = []
    reading = _Reading(window, step, since)
    for row in rows:
        name, state, reason = row["name"], row["state"], row["reason"]
        version = row.get("version")
        if version is None and not _is_model_name(name):
            components.append({"name": name, "state": state, "reason": reason})
            continue
        model = models.get(name)
        if model is None:
            model = models[name] = {"name": name, "state": None, "reason": "", "versions": []}
        if version is None:
            model["state"], model["reason"] = state, reason
            if state != "READY" and reason not in BENIGN_REASONS:
                failures.append({"model": name, "version": None, "reason": reason})
            continue
        if state == "FAILED":
            failures.append({"model": name, "version": version, "reason": reason})
        model["versions"].append(
            {
                "version": version,
                "state": state,
                "reason": reason,
                "labels": list(row.get("labels", [])),
                "traffic": row.get("traffic"),
                "series": reading.points(name, version),
            }
        )
    return {
        "step": step,
        "history_s": SLOTS,
        "alerts": alerts,
        "models": list(models.values()),
        "failures": failures,
        "components": components,
    }


def _is_model_name(name: str) -> bool:
    """Model names never hold a space (repository/paths.py); frontends' rows do ("queue ...")."""
    return " " not in name


class _Reading:
    """Reads each version's points after `since`, deciding how many once per answer."""

    def __init__(self, window: WindowStore | None, step: int, since: float | None) -> None:
        self._window = window
        self._step = step
        self._since = since
        self._seconds: int | None = None

    def points(self, model: str, version: str) -> SeriesPoints | None:
        series = self._window.find(model, version) if self._window is not None else None
        if series is None:
            return None
        if self._seconds is None:
            self._seconds = self._seconds_to_read(series)
        line = series.timeline(self._seconds, self._step, whole_steps=True)
        return _after(line, self._since)

    def _seconds_to_read(self, probe: VersionSeries) -> int:
        step = self._step
        full = (SLOTS // step) * step
        if self._since is None:
            return full
        newest = probe.timeline(step, step, whole_steps=True).time[-1]
        missing = math.floor((newest - self._since) / step + 0.5)
        if missing < 0:  # the client's clock or ours went back: start over
            self._since = None
            return full
        # one point more: a step may end between this probe and a version's read
        return min(full, (missing + 1) * step)


def _after(line: Timeline, since: float | None) -> SeriesPoints:
    start = 0
    if since is not None:
        newer = since + line.step / 2  # times are rounded to the ms; a half step is unambiguous
        while start < len(line.time) and line.time[start] <= newer:
            start += 1
    return {
        "time": line.time[start:],
        "requests_per_second": line.requests_per_second[start:],
        "error_rate": line.error_rate[start:],
        "p50_ms": line.p50_ms[start:],
        "p99_ms": line.p99_ms[start:],
        "queue_depth": line.queue_depth[start:],
        "batch_size": line.batch_size[start:],
    }
