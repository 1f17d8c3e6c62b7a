"""The SLO loop (operations/alerting.py) over the real model manager (with fake runtimes), the
real window of recent requests on a stepped clock and the real alert gauge: alerts fire and
resolve, an idle version never alerts, a breaching canary is rolled back without a reload while
a breaching stable or `auto_rollback: false` only alerts."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from modelport.core.alerts import Alert
from modelport.core.data_plane import DataPlane
from modelport.observability.alert_metrics import AlertMetrics
from modelport.observability.window import WindowStore
from modelport.operations.alerting import AlertService
from tests.fakes import Core, make_core
from tests.unit.test_window import SteppedClock

SLO = {"p99_latency": "50ms", "error_rate": "1%", "window": "10s", "min_requests": 20}
SPLIT = {"labels": {"stable": 1, "canary": 2}, "traffic": {1: 80, 2: 20}}


@dataclass
class Notified:
    alerts: list[tuple[str, str, str, str]] = field(default_factory=list)

    def send(self, alert: Alert) -> None:
        self.alerts.append((alert.name, alert.version, alert.state, alert.summary))

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


@dataclass
class Loop:
    core: Core
    clock: SteppedClock
    window: WindowStore
    registry: CollectorRegistry
    service: AlertService
    notified: Notified
    written: list[tuple[str, int, int]]

    def traffic(self, version: str, seconds: int, ok: int, failed: int = 0, latency: float = 0.005):
        """`seconds` seconds of requests to m's version: per second `ok` successes and
        `failed` internal errors."""
        series = self.window.series("m", version)
        for _ in range(seconds):
            self.clock.t += 1
            for _ in range(ok):
                series.success(latency, 0.0)
            for _ in range(failed):
                series.failure("internal")

    async def evaluate(self) -> None:
        self.clock.t += 1
        await self.service.evaluate_once()

    def gauge(self, version: str, slo: str) -> float | None:
        labels = {"model": "m", "version": version, "slo": slo}
        return self.registry.get_sample_value("modelport_alert_state", labels)

    def states(self) -> list[tuple[str, str, str]]:
        return [(a["name"], a["version"], a["state"]) for a in self.service.report()["alerts"]]


def run(config: dict[str, Any], scenario: Callable[[Loop], Awaitable[None]]) -> None:
    async def main() -> None:
        core = make_core()
        core.source.put("m", (1, 2), {"version_policy": "all", **config})
        await core.manager.sync("m")
        clock = SteppedClock()
        window = WindowStore(clock)
        registry = CollectorRegistry()
        written: list[tuple[str, int, int]] = []

        def write_traffic(name: str, canary: int, stable: int) -> bool:
            # what repository/publish.shift_traffic does to config.yaml, on the fake source
            raw = {"version_policy": "all", **config}
            raw["traffic"] = {**raw["traffic"], stable: 100.0, canary: 0.0}
            core.source.put(name, (1, 2), raw)
            written.append((name, canary, stable))
            return True

        notified = Notified()
        service = AlertService(
            core.manager,
            window,
            AlertMetrics(registry),
            write_traffic=write_traffic,
            notifier=notified,
            clock=clock,
        )
        try:
            await scenario(Loop(core, clock, window, registry, service, notified, written))
        finally:
            await core.manager.close()

    asyncio.run(main())


def test_a_slow_version_alerts_and_resolves() -> None:
    async def scenario(loop: Loop) -> None:
        loop.traffic("1", 5, ok=10, latency=0.2)
        await loop.evaluate()
        assert loop.states() == [] and loop.gauge("1", "p99_latency") == 0  # pending
        await loop.evaluate()
        assert loop.states() == [("ModelportP99LatencySLO", "1", "firing")]
        assert loop.gauge("1", "p99_latency") == 1 and loop.gauge("1", "error_rate") == 0
        [alert] = loop.service.report()["alerts"]
        assert alert["value"] == pytest.approx(0.2, rel=0.25) and alert["threshold"] == 0.05
        assert "m version 1: p99_latency" in alert["summary"]
        loop.traffic("1", 12, ok=10, latency=0.004)  # the slow seconds leave the window
        await loop.evaluate()
        assert loop.states() == [("ModelportP99LatencySLO", "1", "resolved")]
        assert loop.gauge("1", "p99_latency") == 0
        assert [(n, v, s) for n, v, s, _ in loop.notified.alerts] == [
            ("ModelportP99LatencySLO", "1", "firing"),
            ("ModelportP99LatencySLO", "1", "resolved"),
        ]

    run({"slo": SLO}, scenario)


def test_an_idle_or_barely_used_version_never_alerts() -> None:
    async def scenario(loop: Loop) -> None:
        loop.traffic("2", 2, ok=3, failed=5, latency=1.0)  # 16 requests, all bad: under 20
        for _ in range(3):
            await loop.evaluate()
        assert loop.states() == [] and loop.notified.alerts == []
        assert loop.gauge("1", "error_rate") == 0 and loop.gauge("2", "error_rate") == 0

    run({"slo": SLO}, scenario)


def test_a_failing_canary_is_rolled_back_without_a_reload() -> None:
    async def scenario(loop: Loop) -> None:
        manager = loop.core.manager
        plane = DataPlane(manager)
        plane.add_index_notes(loop.service.index_notes)
        loads = len(loop.core.runtimes.hosts)
        loop.traffic("1", 5, ok=16)
        loop.traffic("2", 5, ok=4, failed=1)  # 20 % of the canary's requests fail
        await loop.evaluate()
        assert loop.written == [] and manager.configs()[0][1].traffic == {1: 80, 2: 20}
        await loop.evaluate()  # the canary's alert fires: the rollback follows at once
        assert loop.written == [("m", 2, 1)]
        config = manager.configs()[0][1]
        assert config.traffic == {1: 100, 2: 0}
        routed = Counter(manager.resolve("m").version for _ in range(300))
        assert routed == {"1": 300}
        assert manager.resolve("m", "2").version == "2"  # still served when asked by number
        assert len(loop.core.runtimes.hosts) == loads  # routing changed, nothing reloaded
        [rollback] = loop.service.report()["rollbacks"]
        assert rollback["model"] == "m" and rollback["from_version"] == "2"
        assert rollback["to_version"] == "1"
        assert rollback["reason"] == "rolled back: error_rate 20% > 1% over 10s"
        assert ("ModelportCanaryRolledBack", "2", "firing") in loop.states()
        assert ("ModelportErrorRateSLO", "2", "firing") in loop.states()
        rows = {row.get("version"): row for row in await plane.repository_index()}
        assert rows["2"]["reason"] == "rolled back: error_rate 20% > 1% over 10s"
        assert rows["2"]["traffic"] == 0 and rows["1"]["reason"] == ""
        assert (
            loop.registry.get_sample_value(
                "modelport_canary_rollbacks_total", {"model": "m", "version": "2"}
            )
            == 1
        )

        await loop.evaluate()
        assert loop.written == [("m", 2, 1)]  # once: the canary has no share any more

        # the operator gives the canary a share again: the rollback no longer stands
        loop.core.source.put("m", (1, 2), {"version_policy": "all", "slo": SLO, **SPLIT})
        await manager.sync("m")
        await loop.evaluate()
        assert ("ModelportCanaryRolledBack", "2", "resolved") in loop.states()
        assert loop.service.index_notes() == {}
        rows = {row.get("version"): row for row in await plane.repository_index()}
        assert rows["2"]["reason"] == ""
        # judged afresh: the failures that had it rolled back no longer count against it
        assert ("ModelportErrorRateSLO", "2", "resolved") in loop.states()
        loop.traffic("2", 3, ok=8)
        await loop.evaluate()
        await loop.evaluate()
        assert loop.written == [("m", 2, 1)]
        assert manager.configs()[0][1].traffic == {1: 80, 2: 20}

    run({"slo": SLO, **SPLIT}, scenario)


def test_auto_rollback_false_only_alerts() -> None:
    async def scenario(loop: Loop) -> None:
        loop.traffic("1", 5, ok=16)
        loop.traffic("2", 5, ok=4, failed=1)
        for _ in range(3):
            await loop.evaluate()
        assert ("ModelportErrorRateSLO", "2", "firing") in loop.states()
        assert loop.written == []
        assert loop.core.manager.configs()[0][1].traffic == {1: 80, 2: 20}
        assert loop.service.report()["rollbacks"] == []

    run({"slo": {**SLO, "auto_rollback": False}, **SPLIT}, scenario)


def test_no_rollback_while_the_stable_version_breaches_too() -> None:
    async def scenario(loop: Loop) -> None:
        loop.traffic("1", 5, ok=16, failed=4)
        loop.traffic("2", 5, ok=4, failed=1)
        for _ in range(3):
            await loop.evaluate()
        assert ("ModelportErrorRateSLO", "1", "firing") in loop.states()
        assert ("ModelportErrorRateSLO", "2", "firing") in loop.states()
        assert loop.written == [] and loop.service.report()["rollbacks"] == []

    run({"slo": SLO, **SPLIT}, scenario)


def test_removing_the_slo_resolves_its_alerts() -> None:
    async def scenario(loop: Loop) -> None:
        loop.traffic("1", 5, ok=10, latency=0.3)
        await loop.evaluate()
        await loop.evaluate()
        assert loop.states() == [("ModelportP99LatencySLO", "1", "firing")]
        loop.core.source.put("m", (1, 2), {"version_policy": "all"})
        await loop.core.manager.sync("m")
        await loop.evaluate()
        assert loop.states() == [("ModelportP99LatencySLO", "1", "resolved")]
        assert loop.gauge("1", "p99_latency") == 0
        assert "no longer judged" in loop.service.report()["alerts"][0]["summary"]

    run({"slo": SLO}, scenario)
