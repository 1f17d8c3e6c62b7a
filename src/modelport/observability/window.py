"""The last 15 minutes of every model version's requests, kept in process in one-second slots.

The dashboard draws from it and the SLO evaluator reads its windows, so neither needs
Prometheus. Recording is on the request path: a request costs a clock read, a bisect and a few
list increments on the current second's row; the row is copied into a numpy ring when the
second turns, and windows are sums over that ring.

Latency is kept as a histogram with geometric buckets (each bound 1.25x the previous, 50 us to
about 60 s), so a quantile read from it is within 25 % of the true value, and usually much
closer: it interpolates inside the bucket.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass

import numpy as np

SLOT_SECONDS = 1
HISTORY_SECONDS = 15 * 60
SLOTS = HISTORY_SECONDS // SLOT_SECONDS
LATENCY_BOUNDS: tuple[float, ...] = tuple(50e-6 * 1.25**i for i in range(64))
"""Upper bounds (seconds) of the latency buckets; one more bucket holds everything above."""

SERVER_ERROR_KINDS = frozenset({"unavailable", "timeout", "internal"})
"""Failures that count against a model's error rate: the server's, not the client's (a
malformed request, an unknown model) nor a limit the model's config asked for."""

# columns of a slot row
REQUESTS = 0  # completed successfully
SERVER_ERRORS = 1
CLIENT_ERRORS = 2
EXECUTIONS = 3  # runs of the model (a batch is one)
BATCHED = 4  # inferences over those runs
IN_FLIGHT_MAX = 5
QUEUE_NS = 6  # summed over successful requests
LATENCY = 7  # first latency bucket
WIDTH = LATENCY + len(LATENCY_BOUNDS) + 1


@dataclass(frozen=True, slots=True)
class WindowTotals:
    """What one version did over a window."""

    seconds: float
    requests: int
    server_errors: int
    client_errors: int
    executions: int
    batched: int
    in_flight_max: int
    queue_ns: int
    latency_counts: tuple[int, ...]

    @property
    def completed(self) -> int:
        """Requests that ran to an answer the server is answerable for (success or its error)."""
        return self.requests + self.server_errors

    @property
    def error_rate(self) -> float | None:
        return self.server_errors / self.completed if self.completed else None

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mean_batch(self) -> float | None:
        return self.batched / self.executions if self.executions else None

    def latency_quantile(self, q: float) -> float | None:
        return quantile(self.latency_counts, q)


def quantile(counts: tuple[int, ...] | list[int] | np.ndarray, q: float) -> float | None:
    """The q-quantile (0..1) of a latency histogram in LATENCY_BOUNDS' buckets, in seconds,
    interpolated geometrically inside its bucket; None when it is empty."""
    value = quantiles(np.asarray([counts], dtype=np.int64), q)[0]
    return None if value is None else value / 1000


class VersionSeries:
    """One model version's slots. All calls come from the event loop's thread."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._rows = np.zeros((SLOTS, WIDTH), dtype=np.int64)
        self._seconds = np.full(SLOTS, -1, dtype=np.int64)
        self._second = -1
        self._live = [0] * WIDTH
        self._in_flight = 0

    # --- recording (the request path) ---

    def _advance(self) -> int:
        """The current second, the live row turned over to it first if the second changed."""
        now = int(self._clock.now())
        if now != self._second:
            self._turn(now)
        return now

    def _row(self) -> list[int]:
        self._advance()
        return self._live

    def _turn(self, second: int) -> None:
        if self._second >= 0:
            slot = self._second % SLOTS
            self._rows[slot] = self._live
            self._seconds[slot] = self._second
        self._second = second
        self._live = [0] * WIDTH
        self._live[IN_FLIGHT_MAX] = self._in_flight

    def success(self, latency_s: float, queue_s: float) -> None:
        row = self._row()
        row[REQUESTS] += 1
        row[QUEUE_NS] += int(queue_s * 1e9)
        row[LATENCY + bisect.bisect_left(LATENCY_BOUNDS, latency_s)] += 1

    def failure(self, reason: str) -> None:
        row = self._row()
        row[SERVER_ERRORS if reason in SERVER_ERROR_KINDS else CLIENT_ERRORS] += 1

    def execution(self, batch_size: int) -> None:
        row = self._row()
        row[EXECUTIONS] += 1
        row[BATCHED] += batch_size

    def in_flight(self, delta: int) -> None:
        self._in_flight += delta
        row = self._row()
        if self._in_flight > row[IN_FLIGHT_MAX]:
            row[IN_FLIGHT_MAX] = self._in_flight

    # --- reading ---

    def _window_rows(self, seconds: int) -> np.ndarray:
        """Rows of the last `seconds` whole seconds before the current one, plus the current."""
        now = self._advance()
        recent = (self._seconds >= now - seconds) & (self._seconds >= 0)
        return np.vstack([self._rows[recent], np.asarray(self._live, dtype=np.int64)])

    def totals(self, seconds: float) -> WindowTotals:
        whole = max(1, min(SLOTS - 1, math.ceil(seconds)))
        rows = self._window_rows(whole)
        summed = rows.sum(axis=0)
        return WindowTotals(
            seconds=float(whole),
            requests=int(summed[REQUESTS]),
            server_errors=int(summed[SERVER_ERRORS]),
            client_errors=int(summed[CLIENT_ERRORS]),
            executions=int(summed[EXECUTIONS]),
            batched=int(summed[BATCHED]),
            in_flight_max=int(rows[:, IN_FLIGHT_MAX].max()),
            queue_ns=int(summed[QUEUE_NS]),
            latency_counts=tuple(int(count) for count in summed[LATENCY:]),
        )

    def timeline(
        self, seconds: int = HISTORY_SECONDS, step: int = 5, *, whole_steps: bool = False
    ) -> Timeline:
        """Points every `step` seconds over the last `seconds` (oldest first), for charts.

        `whole_steps`: the points cover whole multiples of `step` (of the monotonic clock) and
        end with the last one that is over (the current one is left out), so a reader polling
        for new points gets back the points it has unchanged (the dashboard)."""
        step = max(1, step)
        points = max(1, min(SLOTS, seconds) // step)
        now = self._advance()
        # point k covers (end_k - step, end_k]; the last ends with the current second, or
        # with whole steps before the step the current second is in
        last = (now // step) * step - 1 if whole_steps else now
        grid = np.zeros((points, WIDTH), dtype=np.int64)
        peak = np.zeros(points, dtype=np.int64)
        first = last - points * step + 1
        valid = (self._seconds >= first) & (self._seconds <= last)
        index = (self._seconds[valid] - first) // step
        np.add.at(grid, index, self._rows[valid])
        np.maximum.at(peak, index, self._rows[valid][:, IN_FLIGHT_MAX])
        if not whole_steps:
            live = np.asarray(self._live, dtype=np.int64)
            grid[-1] += live
            peak[-1] = max(peak[-1], live[IN_FLIGHT_MAX])
        wall_offset = self._clock.wall() - self._clock.now()
        ends = [first + (k + 1) * step - 1 + wall_offset for k in range(points)]
        completed = grid[:, REQUESTS] + grid[:, SERVER_ERRORS]
        return Timeline(
            step=step,
            time=[round(end, 3) for end in ends],
            requests_per_second=[round(float(n) / step, 3) for n in grid[:, REQUESTS]],
            error_rate=[
                round(float(e) / float(c), 5) if c else None
                for e, c in zip(grid[:, SERVER_ERRORS], completed, strict=True)
            ],
            p50_ms=quantiles(grid[:, LATENCY:], 0.5),
            p99_ms=quantiles(grid[:, LATENCY:], 0.99),
            queue_depth=[int(value) for value in peak],
            batch_size=[
                round(float(b) / float(x), 3) if x else None
                for b, x in zip(grid[:, BATCHED], grid[:, EXECUTIONS], strict=True)
            ],
        )


def quantiles(histograms: np.ndarray, q: float) -> list[float | None]:
    """The q-quantile of each row's histogram, in ms (None for an empty row); vectorised, as
    the dashboard asks for hundreds at a time. Above the last bound it answers that bound."""
    totals = histograms.sum(axis=1)
    cumulative = np.cumsum(histograms, axis=1)
    ranks = q * totals
    index = (cumulative < ranks[:, None]).sum(axis=1)  # first bucket reaching the rank
    index = np.minimum(index, histograms.shape[1] - 1)
    rows = np.arange(len(histograms))
    count = histograms[rows, index]
    seen = cumulative[rows, index] - count
    bounds = np.asarray((*LATENCY_BOUNDS, LATENCY_BOUNDS[-1]))
    upper = bounds[index]
    lower = np.where(index > 0, bounds[np.maximum(index - 1, 0)], upper / 1.25)
    lower = np.where(index >= len(LATENCY_BOUNDS), upper, lower)
    share = np.divide(ranks - seen, count, out=np.zeros(len(rows)), where=count > 0)
    values = lower * np.power(upper / lower, share) * 1000
    return [round(float(v), 4) if t else None for v, t in zip(values, totals, strict=True)]


@dataclass(frozen=True, slots=True)
class Timeline:
    step: int
    time: list[float]
    """Unix time (s) of each point's last second."""
    requests_per_second: list[float]
    error_rate: list[float | None]
    p50_ms: list[float | None]
    p99_ms: list[float | None]
    queue_depth: list[int]
    """Most requests in flight (queued or running) at once during the point."""
    batch_size: list[float | None]


class Clock:
    """Monotonic seconds for slots, wall time for chart axes; tests step a fake one."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class WindowStore:
    """Every version's series, kept across reloads of the same version (like metric labels)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or Clock()
        self._series: dict[tuple[str, str], VersionSeries] = {}

    def series(self, model: str, version: str) -> VersionSeries:
        key = (model, version)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = VersionSeries(self._clock)
        return found

    def find(self, model: str, version: str) -> VersionSeries | None:
        return self._series.get((model, version))

    def keys(self) -> list[tuple[str, str]]:
        return sorted(self._series)
