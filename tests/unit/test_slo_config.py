"""`slo:` in config.yaml: durations with units, rates as percentages or fractions, at least one
objective, clear errors naming the field; changing it never reloads a version."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelport.core.config import config_from_mapping
from modelport.core.slo_config import MAX_SLO_WINDOW_SECONDS
from modelport.observability.window import HISTORY_SECONDS
from tests.fakes import make_core


def slo_of(raw: dict[str, Any]) -> Any:
    config = config_from_mapping({"slo": raw}, "m", "config.yaml")
    assert config.slo is not None
    return config.slo


def test_the_issues_example_and_the_defaults() -> None:
    slo = slo_of({"p99_latency": "50ms", "error_rate": "1%", "window": "5m"})
    assert slo.p99_latency == pytest.approx(0.05)
    assert slo.error_rate == pytest.approx(0.01)
    assert slo.window == 300
    assert slo.min_requests == 20
    assert slo.for_seconds == 0
    assert slo.auto_rollback is True
    assert config_from_mapping({}, "m").slo is None


@pytest.mark.parametrize(
    ("raw", "field", "expected"),
    [
        ({"p99_latency": "1.5s"}, "p99_latency", 1.5),
        ({"p99_latency": "500us"}, "p99_latency", 0.0005),
        ({"p99_latency": "2m"}, "p99_latency", 120.0),
        ({"p99_latency": " 20 ms "}, "p99_latency", 0.02),
        ({"error_rate": 0.01}, "error_rate", 0.01),
        ({"error_rate": "0.5%"}, "error_rate", 0.005),
        ({"error_rate": 0}, "error_rate", 0.0),
        ({"error_rate": "0%"}, "error_rate", 0.0),
        ({"error_rate": "1%", "window": "10s"}, "window", 10.0),
        ({"error_rate": "1%", "window": "15m"}, "window", 900.0),
        ({"error_rate": "1%", "window": "1500ms"}, "window", 1.5),
        ({"error_rate": "1%", "for": "30s"}, "for_seconds", 30.0),
        ({"error_rate": "1%", "min_requests": 5}, "min_requests", 5),
        ({"error_rate": "1%", "auto_rollback": False}, "auto_rollback", False),
    ],
)
def test_good_values(raw: dict[str, Any], field: str, expected: object) -> None:
    assert getattr(slo_of(raw), field) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "slo: Value error, an slo needs at least one objective"),
        ({"window": "5m"}, "at least one objective: p99_latency or error_rate"),
        ({"p99_latency": 50}, "slo.p99_latency: Value error, p99_latency needs a unit"),
        ({"p99_latency": "fast"}, "p99_latency 'fast' is not a duration like '50ms'"),
        ({"p99_latency": "50"}, "p99_latency '50' is not a duration"),
        ({"p99_latency": "0ms"}, "p99_latency '0ms' must be above 0"),
        ({"p99_latency": "nanms"}, "is not a duration"),
        ({"error_rate": 5}, "error_rate 5 is a fraction of requests .* write '5%'"),
        ({"error_rate": 1}, "write '1%' for a percentage"),
        ({"error_rate": "150%"}, "must be at least 0 % and below 100 %"),
        ({"error_rate": -0.1}, "must be at least 0 % and below 100 %"),
        ({"error_rate": "lots"}, "must be a percentage"),
        ({"error_rate": "x%"}, "is not a percentage like '1%'"),
        ({"error_rate": True}, "must be a percentage"),
        ({"error_rate": "1%", "window": 300}, "slo.window: Value error, window needs a unit"),
        ({"error_rate": "1%", "window": "0s"}, "must be between 1s and 15m"),
        ({"error_rate": "1%", "window": "1h"}, "must be between 1s and 15m"),
        ({"error_rate": "1%", "for": "-1s"}, "for '-1s' must be between 0s and 1h"),
        ({"error_rate": "1%", "min_requests": 0}, "slo.min_requests: Input should be greater"),
        ({"error_rate": "1%", "min_requests": "20"}, "slo.min_requests: Input should be"),
        ({"error_rate": "1%", "auto_rollback": "maybe"}, "slo.auto_rollback: Input should be"),
        ({"p95_latency": "10ms"}, "slo.p95_latency: Extra inputs are not permitted"),
    ],
)
def test_bad_values_name_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=rf"invalid config.yaml: .*{message}"):
        config_from_mapping({"slo": raw}, "m", "config.yaml")


def test_a_bad_slo_that_is_not_a_mapping() -> None:
    with pytest.raises(ValueError, match=r"invalid config.yaml: slo: Input should be"):
        config_from_mapping({"slo": "50ms"}, "m", "config.yaml")


def test_the_longest_window_is_what_the_server_keeps() -> None:
    assert MAX_SLO_WINDOW_SECONDS == HISTORY_SECONDS


def test_changing_the_slo_applies_without_reloading_the_version() -> None:
    async def main() -> None:
        core = make_core()
        core.source.put("m", (1,), {"slo": {"error_rate": "1%"}})
        await core.manager.sync("m")
        loads = len(core.runtimes.hosts)
        core.source.put("m", (1,), {"slo": {"p99_latency": "20ms", "window": "1m"}})
        await core.manager.sync("m")
        [(name, config, ready)] = core.manager.configs()
        assert (name, ready) == ("m", [1])
        assert config.slo is not None and config.slo.p99_latency == pytest.approx(0.02)
        core.source.put("m", (1,), {})
        await core.manager.sync("m")
        assert core.manager.configs()[0][1].slo is None
        assert len(core.runtimes.hosts) == loads
        await core.manager.close()

    asyncio.run(main())
