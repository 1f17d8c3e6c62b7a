"""The in-process window of recent requests (observability/window.py)."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.observability.metrics import Metrics
from modelport.observability.window import (
    HISTORY_SECONDS,
    LATENCY_BOUNDS,
    Clock,
    WindowStore,
    quantile,
)


class SteppedClock(Clock):
    def __init__(self) -> None:
        self.t = 10_000.25

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1.8e9 + self.t


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


def test_totals_count_the_window_only(clock: SteppedClock) -> None:
    series = WindowStore(clock).series("m", "1")
    for second in range(120):
        clock.t = 10_000.25 + second
        for _ in range(10):
            series.success(0.002, 0.0005)
        series.execution(10)
        series.failure("internal")
        series.failure("invalid_input")
    last_minute = series.totals(59)  # 59 whole seconds before this one, and this one
    assert last_minute.requests == 600
    assert last_minute.server_errors == 60
    assert last_minute.client_errors == 60
    assert last_minute.error_rate == pytest.approx(60 / 660)
    assert last_minute.rate == pytest.approx(600 / 59)
    assert last_minute.mean_batch == 10
    assert last_minute.queue_ns == 600 * 500_000
    assert series.totals(200).requests == 1200


def test_old_seconds_fall_out_of_the_ring(clock: SteppedClock) -> None:
    series = WindowStore(clock).series("m", "1")
    series.success(0.001, 0.0)
    clock.t += HISTORY_SECONDS + 5
    series.success(0.001, 0.0)
    assert series.totals(HISTORY_SECONDS).requests == 1


def test_latency_quantiles_are_within_a_bucket(clock: SteppedClock) -> None:
    series = WindowStore(clock).series("m", "1")
    rng = np.random.default_rng(0)
    latencies = rng.uniform(0.001, 0.020, 5000)
    for latency in latencies:
        series.success(float(latency), 0.0)
    totals = series.totals(10)
    for q in (0.5, 0.9, 0.99):
        estimate = totals.latency_quantile(q)
        assert estimate is not None
        assert estimate == pytest.approx(float(np.quantile(latencies, q)), rel=0.25)
    assert quantile([0] * (len(LATENCY_BOUNDS) + 1), 0.5) is None


def test_in_flight_peak_and_timeline(clock: SteppedClock) -> None:
    series = WindowStore(clock).series("m", "1")
    for second in range(30):
        clock.t = 10_000.25 + second
        depth = 1 + second % 4
        for _ in range(depth):
            series.in_flight(1)
        for _ in range(depth):
            series.success(0.004 if second < 20 else 0.040, 0.0)
            series.in_flight(-1)
    line = series.timeline(seconds=30, step=5)
    assert len(line.time) == 6
    assert line.time[-1] == pytest.approx(1.8e9 + 10_029)
    assert line.queue_depth == [4] * 6
    assert sum(line.requests_per_second) * 5 == sum(1 + s % 4 for s in range(30))
    fast, slow = line.p99_ms[0], line.p99_ms[-1]
    assert fast is not None and slow is not None
    assert fast == pytest.approx(4, rel=0.25)
    assert slow == pytest.approx(40, rel=0.25)
    assert line.error_rate[0] == 0.0


def test_a_quiet_timeline_has_gaps_not_zeros(clock: SteppedClock) -> None:
    line = WindowStore(clock).series("m", "1").timeline(seconds=60, step=10)
    assert line.requests_per_second == [0.0] * 6
    assert line.p50_ms == [None] * 6
    assert line.batch_size == [None] * 6


def test_metrics_feed_the_window_and_keep_it_across_reloads(clock: SteppedClock) -> None:
    store = WindowStore(clock)
    metrics = Metrics(window=store)
    first = metrics.recorder("m", "1")
    first.in_flight(1)
    first.success(0.003, 0.002, 0.0001, 1)
    first.in_flight(-1)
    first.execution(1)
    again = metrics.recorder("m", "1")  # the same version loaded again
    again.failure(0.1, "timeout")
    totals = store.series("m", "1").totals(5)
    assert (totals.requests, totals.server_errors, totals.executions) == (1, 1, 1)
    assert store.keys() == [("m", "1")]
    assert Metrics().recorder("m", "1") is not None  # and works without a window
