"""The SLO loop: every few seconds, each served version of a model with an `slo:` is judged on
its recent requests; alerts go pending, fire and resolve; a breaching canary is rolled back.

It runs on the event loop (a judgement is a few sums over numpy rows per version) and never
touches the request path: the window it reads is filled by the metrics recorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from modelport.core.alerts import Alert, AlertBook, AlertObserver, AlertsReport
from modelport.core.config import ModelConfig
from modelport.core.errors import ModelportError
from modelport.core.slo import (
    ROLLBACK_ALERT,
    Reading,
    RollbackPlan,
    WindowSource,
    plan_rollback,
    read_objectives,
)

log = logging.getLogger("modelport.alerts")

DEFAULT_INTERVAL = 5.0


class ServedModels(Protocol):
    """What the loop asks of the model manager (core's ModelManager is one)."""

    def configs(self) -> list[tuple[str, ModelConfig, list[int]]]: ...

    async def sync(self, name: str, config: ModelConfig | None = None) -> list[str]: ...


class Notifier(Protocol):
    """Sends alerts out (operations/webhooks.py); `send` must never wait."""

    def send(self, alert: Alert) -> None: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def wall(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


TrafficWriter = Callable[[str, int, int], bool]
"""(model, canary, stable): move the canary's share to stable in the model's config.yaml, the
way `modelport promote` changes it (repository/publish.shift_traffic); True if it changed."""


class AlertService:
    """The SLO loop, the alert book and the rollbacks; GET /v2/alerts reads `report()`."""

    def __init__(
        self,
        models: ServedModels,
        window: WindowSource,
        observer: AlertObserver,
        *,
        write_traffic: TrafficWriter | None = None,
        notifier: Notifier | None = None,
        interval: float = DEFAULT_INTERVAL,
        clock: Clock | None = None,
    ) -> None:
        self._models = models
        self._window = window
        self._observer = observer
        self._write_traffic = write_traffic
        self._notifier = notifier
        self.interval = interval
        self._clock = clock or SystemClock()
        self._book = AlertBook()
        self._standing: dict[tuple[str, str], RollbackPlan] = {}
        """Rollbacks in force (the canary's share still 0), by (model, canary version)."""
        self._judge_from: dict[tuple[str, str], float] = {}
        """Versions whose rollback ended: judged on their requests since then only."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._notifier is not None:
            self._notifier.start()
        self._task = asyncio.create_task(self._run(), name="modelport-slo")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._notifier is not None:
            await self._notifier.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.evaluate_once()
            except Exception:  # one bad round must not end the loop
                log.exception("evaluating the SLOs failed")

    def report(self) -> AlertsReport:
        return self._book.report()

    def index_notes(self) -> dict[tuple[str, str], str]:
        """The reason of each rollback in force, for its canary's row of the repository index."""
        return {key: plan.reason for key, plan in self._standing.items()}

    async def evaluate_once(self) -> None:
        now, wall = self._clock.now(), self._clock.wall()
        configs = self._models.configs()
        self._end_rollbacks({name: config for name, config, _ in configs}, now, wall)
        judged: set[tuple[str, str]] = set()
        for name, config, ready in configs:
            if config.slo is None:
                continue
            try:
                await self._evaluate_model(name, config, ready, judged, now, wall)
            except Exception:
                log.exception("evaluating the SLO of model %s failed", name)
        for alert in self._book.resolve_where(
            lambda a: a.name != ROLLBACK_ALERT and (a.model, a.version) not in judged,
            wall,
            "no longer judged (not served, or its SLO was removed)",
        ):
            self._observer.alert_state(alert.model, alert.version, alert.objective, False)
            self._changed(alert)

    def _end_rollbacks(self, configs: dict[str, ModelConfig], now: float, wall: float) -> None:
        """Rollbacks the operator undid (a new share, a promotion) end, with their version's
        alerts; the version is then judged only on requests from now on, not on the ones that
        had it rolled back."""
        ended = {key for key in self._standing if not _stands(key, configs)}
        for key in ended:
            del self._standing[key]
            self._judge_from[key] = now
        for alert in self._book.resolve_where(
            lambda a: (a.model, a.version) in ended,
            wall,
            "the rollback no longer stands (the version has a traffic share again, was "
            "promoted or is no longer served); it is judged afresh from now",
        ):
            if alert.name != ROLLBACK_ALERT:
                self._observer.alert_state(alert.model, alert.version, alert.objective, False)
            self._changed(alert)

    def _seconds(self, key: tuple[str, str], window: float, now: float) -> float:
        """The window to judge a version over: shorter while it is judged afresh."""
        start = self._judge_from.get(key)
        if start is None:
            return window
        if now - start >= window:
            del self._judge_from[key]
            return window
        return max(1.0, now - start)

    async def _evaluate_model(
        self,
        name: str,
        config: ModelConfig,
        ready: list[int],
        judged: set[tuple[str, str]],
        now: float,
        wall: float,
    ) -> None:
        slo = config.slo
        assert slo is not None
        firing: dict[int, list[Reading]] = {}
        breached: dict[int, bool] = {}
        for number in ready:
            version = str(number)
            judged.add((name, version))
            series = self._window.find(name, version)
            seconds = self._seconds((name, version), slo.window, now)
            readings = read_objectives(slo, None if series is None else series.totals(seconds))
            breached[number] = any(reading.breached for reading in readings)
            for reading in readings:
                changed = self._book.observe(
                    name, version, reading, slo.window, slo.for_seconds, now, wall
                )
                if changed is not None:
                    self._changed(changed)
            alerting = {
                a.objective for a in self._book.firing(name, version) if a.name != ROLLBACK_ALERT
            }
            for reading in readings:
                self._observer.alert_state(
                    name, version, reading.objective, reading.objective in alerting
                )
            firing[number] = [r for r in readings if r.objective in alerting]
        plan = plan_rollback(name, config, firing, breached)
        if plan is not None:
            await self._roll_back(plan, config, now)

    async def _roll_back(self, plan: RollbackPlan, config: ModelConfig, now: float) -> None:
        log.warning(
            "model %s: moving canary version %d's traffic back to stable version %d, %s "
            "(traffic %s -> %s; %d requests in the window)",
            plan.model,
            plan.canary,
            plan.stable,
            plan.reason,
            _split(config.traffic),
            _split(plan.traffic),
            plan.cause.requests,
        )
        if self._write_traffic is not None:
            try:
                await asyncio.to_thread(self._write_traffic, plan.model, plan.canary, plan.stable)
            except Exception as exc:  # the file may be read-only, gone, or edited meanwhile
                log.error(
                    "model %s: config.yaml could not be changed for the rollback (%s); the "
                    "running server moves the traffic all the same",
                    plan.model,
                    exc,
                )
        # the running config with the new split: nothing reloads (traffic is routing only), so
        # requests in flight finish on the canary and the next ones go to stable
        try:
            await self._models.sync(plan.model, config.model_copy(update={"traffic": plan.traffic}))
        except ModelportError as exc:
            log.error("model %s: the rollback could not be applied: %s", plan.model, exc.message)
            return
        assert config.slo is not None
        self._standing[(plan.model, str(plan.canary))] = plan
        self._observer.rolled_back(plan.model, str(plan.canary))
        # stamped once applied: every request that arrives after this time goes to stable
        applied = self._clock.wall()
        self._changed(self._book.fire_rollback(plan, config.slo.window, applied, now))

    def _changed(self, alert: Alert) -> None:
        if alert.state == "firing":
            log.warning("alert %s firing: %s", alert.name, alert.summary)
        else:
            log.info("alert %s resolved: %s", alert.name, alert.summary)
        if self._notifier is not None:
            self._notifier.send(alert)


def _stands(key: tuple[str, str], configs: dict[str, ModelConfig]) -> bool:
    """A rollback is in force while the model's split still gives the canary 0: a new share,
    a promotion (which ends the split) or the version leaving the split ends it."""
    config = configs.get(key[0])
    return config is not None and config.traffic.get(int(key[1])) == 0


def _split(traffic: dict[int, float]) -> str:
    return "{" + ", ".join(f"{v}: {w:g}" for v, w in sorted(traffic.items())) + "}"
