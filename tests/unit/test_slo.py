"""The core's SLO decisions (core/slo.py) and alert state (core/alerts.py), with the time passed
in: objectives against a window, the min_requests floor, pending -> firing -> resolved, bounded
history, and when a canary is rolled back."""

from __future__ import annotations

from typing import Any

import pytest

from modelport.core.alerts import AlertBook, rfc3339
from modelport.core.config import ModelConfig, config_from_mapping
from modelport.core.slo import (
    Reading,
    describe,
    format_value,
    moved_share,
    plan_rollback,
    read_objectives,
)
from modelport.observability.window import WindowStore
from tests.unit.test_window import SteppedClock

SLO = {"p99_latency": "50ms", "error_rate": "1%", "window": "10s", "min_requests": 20}


def config(**fields: Any) -> ModelConfig:
    return config_from_mapping({"slo": SLO, **fields}, "m")


def totals(successes: int, latency_s: float, failures: int = 0) -> Any:
    series = WindowStore(SteppedClock()).series("m", "1")
    for _ in range(successes):
        series.success(latency_s, 0.0)
    for _ in range(failures):
        series.failure("internal")
    series.failure("invalid_input")  # a client's error never counts against the SLO
    return series.totals(10)


def test_objectives_read_from_the_window() -> None:
    slo = config().slo
    assert slo is not None
    latency, errors = read_objectives(slo, totals(98, 0.2, failures=2))
    assert latency.objective == "p99_latency" and latency.breached
    assert latency.value == pytest.approx(0.2, rel=0.25) and latency.requests == 98
    assert errors.objective == "error_rate" and errors.breached
    assert errors.value == pytest.approx(0.02) and errors.requests == 100
    fine = read_objectives(slo, totals(100, 0.01))
    assert [r.breached for r in fine] == [False, False]
    assert fine[1].value == 0


def test_too_few_requests_never_breach() -> None:
    slo = config().slo
    assert slo is not None
    few = read_objectives(slo, totals(10, 0.5, failures=9))
    assert [r.breached for r in few] == [False, False]
    assert few[1].value == pytest.approx(9 / 19)  # measured all the same
    nothing = read_objectives(slo, None)
    assert [(r.value, r.requests, r.breached) for r in nothing] == [(None, 0, False)] * 2
    only_errors = read_objectives(slo, totals(0, 0.0, failures=30))
    assert only_errors[0].value is None and not only_errors[0].breached
    assert only_errors[1].breached and only_errors[1].value == 1


def test_one_objective_alone() -> None:
    latency_only = config_from_mapping({"slo": {"p99_latency": "1s"}}, "m").slo
    assert latency_only is not None
    assert [r.objective for r in read_objectives(latency_only, None)] == ["p99_latency"]


def test_descriptions() -> None:
    reading = Reading("error_rate", 0.198, 0.01, 505, True)
    assert describe(reading, 300) == "error_rate 19.8% > 1% over 5m"
    assert describe(Reading("p99_latency", 0.2125, 0.05, 40, True), 10) == (
        "p99_latency 212ms > 50ms over 10s"
    )
    assert describe(Reading("p99_latency", 0.01, 0.05, 40, False), 90) == (
        "p99_latency 10ms <= 50ms over 90s"
    )
    assert format_value("p99_latency", 1.5) == "1.5s"
    assert format_value("error_rate", None) == "n/a"
    assert rfc3339(1.8e9) == "2027-01-15T08:00:00.000Z"


SPLIT = {"labels": {"stable": 1, "canary": 2}, "traffic": {1: 80, 2: 20}}
BAD = Reading("error_rate", 0.2, 0.01, 100, True)


def test_a_firing_canary_with_a_healthy_stable_is_rolled_back() -> None:
    plan = plan_rollback("m", config(**SPLIT), {1: [], 2: [BAD]}, {1: False, 2: True})
    assert plan is not None
    assert (plan.canary, plan.stable) == (2, 1)
    assert plan.traffic == {1: 100, 2: 0}
    assert plan.reason == "rolled back: error_rate 20% > 1% over 10s"
    assert plan.cause is BAD


@pytest.mark.parametrize(
    ("fields", "firing", "breached"),
    [
        (SPLIT, {2: [BAD]}, {1: True, 2: True}),  # stable breaches too: not the canary's fault
        (SPLIT, {2: []}, {1: False, 2: True}),  # breached, but its alert does not fire yet
        (SPLIT, {2: [BAD]}, {2: True}),  # stable is not ready
        ({"traffic": {1: 80, 2: 20}}, {2: [BAD]}, {1: False, 2: True}),  # no stable label
        ({**SPLIT, "traffic": {1: 100, 2: 0}}, {2: [BAD]}, {1: False, 2: True}),  # no share
        ({"labels": {"stable": 1}}, {1: [BAD]}, {1: True}),  # no split at all
    ],
)
def test_no_rollback(
    fields: dict[str, Any], firing: dict[int, list[Reading]], breached: dict[int, bool]
) -> None:
    assert plan_rollback("m", config(**fields), firing, breached) is None


def test_auto_rollback_false_never_rolls_back() -> None:
    off = config_from_mapping({"slo": {**SLO, "auto_rollback": False}, **SPLIT}, "m")
    assert plan_rollback("m", off, {2: [BAD]}, {1: False, 2: True}) is None


def test_moved_share_keeps_the_other_versions() -> None:
    assert moved_share({1: 70, 2: 20, 3: 10}, 3, 1) == {1: 80, 2: 20, 3: 0}


def breach(value: float = 0.2) -> Reading:
    return Reading("p99_latency", value, 0.05, 100, True)


OK = Reading("p99_latency", 0.01, 0.05, 100, False)


def test_an_alert_fires_at_the_next_evaluation_that_still_breaches_and_then_resolves() -> None:
    book = AlertBook()
    assert book.observe("m", "1", breach(), 10, 0, now=100, wall=1000) is None
    assert book.active()[0].state == "pending"
    assert book.report()["alerts"] == []  # pending is not shown
    fired = book.observe("m", "1", breach(0.3), 10, 0, now=105, wall=1005)
    assert fired is not None and fired.state == "firing"
    assert fired.since == 1005 and fired.value == 0.3
    assert fired.summary == "m version 1: p99_latency 300ms > 50ms over 10s"
    assert book.observe("m", "1", breach(), 10, 0, now=110, wall=1010) is None  # still firing
    [view] = book.report()["alerts"]
    assert view["state"] == "firing" and view["name"] == "ModelportP99LatencySLO"
    assert view["slo"] == "p99_latency" and view["threshold"] == 0.05 and view["window_s"] == 10
    assert view["ended"] is None and view["since"] == rfc3339(1005)
    resolved = book.observe("m", "1", OK, 10, 0, now=115, wall=1015)
    assert resolved is not None and resolved.state == "resolved" and resolved.ended == 1015
    assert "back within 50ms" in resolved.summary
    [view] = book.report()["alerts"]
    assert view["state"] == "resolved" and view["ended"] == rfc3339(1015)
    assert book.active() == []


def test_a_breach_that_clears_while_pending_never_fires() -> None:
    book = AlertBook()
    book.observe("m", "1", breach(), 10, 0, now=100, wall=1000)
    assert book.observe("m", "1", OK, 10, 0, now=105, wall=1005) is None
    assert book.active() == [] and book.report()["alerts"] == []


def test_for_holds_the_alert_pending() -> None:
    book = AlertBook()
    book.observe("m", "1", breach(), 10, 12, now=100, wall=1000)
    assert book.observe("m", "1", breach(), 10, 12, now=105, wall=1005) is None
    assert book.observe("m", "1", breach(), 10, 12, now=110, wall=1010) is None
    fired = book.observe("m", "1", breach(), 10, 12, now=115, wall=1015)
    assert fired is not None and fired.state == "firing"


def test_resolved_alerts_are_bounded_and_firing_come_first() -> None:
    book = AlertBook(resolved_kept=3)
    for number in range(5):
        version = str(number + 2)
        book.observe("m", version, breach(), 10, 0, now=0, wall=0)
        book.observe("m", version, breach(), 10, 0, now=1, wall=1)
        book.observe("m", version, OK, 10, 0, now=2, wall=2 + number)
    book.observe("m", "1", breach(), 10, 0, now=10, wall=10)
    book.observe("m", "1", breach(), 10, 0, now=11, wall=11)
    alerts = book.report()["alerts"]
    assert [(a["version"], a["state"]) for a in alerts] == [
        ("1", "firing"),
        ("6", "resolved"),  # newest resolved first
        ("5", "resolved"),
        ("4", "resolved"),
    ]
