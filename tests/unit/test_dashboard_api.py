"""The dashboard's data endpoint and files (frontends/rest/dashboard/): what the document holds
(models, versions, labels, shares, failures, points), reading only the points after `since`,
the security headers, and the access rules, in process over the fakes' data plane."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from modelport.core.data_plane import DataPlane
from modelport.core.views import IndexRow
from modelport.frontends.rest import create_app
from modelport.frontends.rest.access_guard import Rule, classify
from modelport.frontends.rest.dashboard.routes import CONTENT_SECURITY_POLICY, STATIC_TYPES
from modelport.frontends.rest.dashboard.series import series_document
from modelport.observability.metrics import Metrics
from modelport.observability.window import HISTORY_SECONDS, Clock, WindowStore
from modelport.security.access import AccessControl
from modelport.security.policy import Scope
from tests.fakes import make_core

WALL = 1.8e9


class SteppedClock(Clock):
    def __init__(self) -> None:
        self.t = 10_000.25

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return WALL + self.t


ROWS: list[IndexRow] = [
    {"name": "fraud", "version": "1", "state": "READY", "reason": "", "labels": ["stable"],
     "traffic": 90.0},
    {"name": "fraud", "version": "2", "state": "READY", "reason": "rolled back: error_rate",
     "labels": ["canary"], "traffic": 10.0},
    {"name": "fraud", "version": "3", "state": "FAILED", "reason": "<b>bad</b> file"},
    {"name": "typo", "state": "UNAVAILABLE", "reason": "invalid config.yaml: max_batch_sise"},
    {"name": "later", "state": "UNAVAILABLE", "reason": "not loaded"},
    {"name": "queue redis://broker/jobs", "state": "UNAVAILABLE", "reason": "connecting"},
]  # fmt: skip


def loaded_window(clock: SteppedClock, seconds: int = 120) -> WindowStore:
    """fraud 1 and 2 served `seconds` seconds: 10 requests a second, 2 ms, every tenth a
    server error on version 2."""
    window = WindowStore(clock)
    start = clock.t
    for second in range(seconds):
        clock.t = start + second
        for version in ("1", "2"):
            series = window.series("fraud", version)
            for _ in range(10):
                series.success(0.002, 0.0001)
            series.execution(10)
            if version == "2":
                series.failure("internal")
    return window


def test_the_document_groups_versions_and_lists_failures() -> None:
    clock = SteppedClock()
    document = series_document(ROWS, loaded_window(clock), alerts=True)
    assert document["alerts"] is True and document["step"] == 5
    assert document["history_s"] == HISTORY_SECONDS
    fraud, typo, later = document["models"]
    assert [v["version"] for v in fraud["versions"]] == ["1", "2", "3"]
    stable, canary, failed = fraud["versions"]
    assert (stable["labels"], stable["traffic"]) == (["stable"], 90.0)
    assert (canary["labels"], canary["traffic"], canary["reason"]) == (
        ["canary"],
        10.0,
        "rolled back: error_rate",
    )
    assert failed["series"] is None and failed["labels"] == [] and failed["traffic"] is None
    assert (typo["state"], typo["versions"]) == ("UNAVAILABLE", [])
    assert later["reason"] == "not loaded"
    assert document["failures"] == [
        {"model": "fraud", "version": "3", "reason": "<b>bad</b> file"},
        {"model": "typo", "version": None, "reason": "invalid config.yaml: max_batch_sise"},
    ]  # "not loaded" is explicit mode, no failure
    assert document["components"] == [
        {"name": "queue redis://broker/jobs", "state": "UNAVAILABLE", "reason": "connecting"}
    ]


def test_points_cover_whole_steps_and_leave_out_the_current_one() -> None:
    clock = SteppedClock()
    window = loaded_window(clock)  # ends inside second 10_119
    [fraud, *_] = series_document(ROWS, window, step=5)["models"]
    points = fraud["versions"][1]["series"]
    assert points is not None
    assert len(points["time"]) == HISTORY_SECONDS // 5
    # the last point is the last whole step before the current second's: 10_110..10_114
    assert points["time"][-1] == pytest.approx(WALL + 10_114, abs=1e-3)
    assert all(
        b - a == pytest.approx(5, abs=1e-3)
        for a, b in zip(points["time"][:-1], points["time"][1:], strict=True)
    )
    assert points["requests_per_second"][-1] == 10
    assert points["error_rate"][-1] == pytest.approx(1 / 11, abs=1e-4)
    assert points["batch_size"][-1] == 10
    assert points["p50_ms"][-1] == pytest.approx(2, rel=0.25)
    assert points["requests_per_second"][0] == 0 and points["p99_ms"][0] is None


def test_since_reads_only_new_points_and_they_match_a_full_read() -> None:
    clock = SteppedClock()
    window = loaded_window(clock)

    def stable(since: float | None) -> dict[str, Any]:
        points = series_document(ROWS, window, since=since)["models"][0]["versions"][0]["series"]
        assert points is not None
        return dict(points)

    full = stable(None)
    newest = full["time"][-1]
    assert stable(newest)["time"] == []  # nothing finished since
    series = window.series("fraud", "1")
    for second in range(3):  # the step that was under way ends (10_115..10_119), the next begins
        clock.t = 10_120.25 + second
        for _ in range(4):
            series.success(0.004, 0.0)
    new = stable(newest)
    assert new["time"] == [pytest.approx(newest + 5, abs=1e-3)]
    again = stable(None)
    assert again["time"][-1] == new["time"][0]
    for field in ("requests_per_second", "p50_ms", "p99_ms", "queue_depth", "batch_size"):
        assert again[field][-1] == new[field][0]
        assert again[field][-2] == full[field][-1]  # a point sent once never changes
    assert stable(newest - 30)["time"] == again["time"][-7:]
    # a client ahead of the server's clock (it went back, or a restart) gets everything
    assert len(stable(newest + 3600)["time"]) == HISTORY_SECONDS // 5


def test_a_window_less_server_still_lists_its_models() -> None:
    document = series_document(ROWS, None)
    assert all(v["series"] is None for v in document["models"][0]["versions"])


def run(scenario: Callable[[httpx.AsyncClient], Awaitable[None]], access: Any = None) -> None:
    async def main() -> None:
        core = make_core()
        core.source.put("fraud", (1, 2), {"labels": {"stable": 1, "canary": 2},
                                          "traffic": {1: 75, 2: 25}})  # fmt: skip
        plane = DataPlane(core.manager)
        await plane.start()
        window = WindowStore(SteppedClock())
        for version in ("1", "2"):  # as Metrics makes them when it binds a loaded version
            window.series("fraud", version)
        app = create_app(plane, Metrics(window=window), max_request_bytes=1 << 20, access=access)
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                await scenario(client)
        finally:
            await plane.close()

    asyncio.run(main())


def test_the_page_and_files_carry_the_security_headers() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        page = await client.get("/dashboard")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'data-keys="none"' in page.text
        assert '<script type="module" src="dashboard/static/dashboard.js">' in page.text
        for name, media_type in STATIC_TYPES.items():
            reply = await client.get(f"/dashboard/static/{name}")
            assert reply.status_code == 200 and reply.headers["content-type"] == media_type
            assert reply.content
        data = await client.get("/dashboard/api/series")
        for answer in (page, reply, data):
            assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert answer.headers["x-content-type-options"] == "nosniff"
        missing = await client.get("/dashboard/static/index.html")  # only the named files
        assert missing.status_code == 404 and "no dashboard file" in missing.json()["error"]

    run(scenario)


def test_the_series_answer_over_http() -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        reply = await client.get("/dashboard/api/series", params={"step": "10"})
        assert reply.status_code == 200 and reply.headers["cache-control"] == "no-store"
        document = reply.json()
        assert document["alerts"] is False and document["step"] == 10
        [fraud] = document["models"]
        assert [(v["version"], v["labels"], v["traffic"]) for v in fraud["versions"]] == [
            ("1", ["stable"], 75.0),
            ("2", ["canary"], 25.0),
        ]
        assert len(fraud["versions"][0]["series"]["time"]) == HISTORY_SECONDS // 10
        for params, problem in (
            ({"step": "0"}, "'step' must be whole seconds from 1 to 60"),
            ({"step": "٣"}, "'step' must be whole seconds"),
            ({"since": "soon"}, "'since' must be a Unix time"),
            ({"since": "nan"}, "'since' must be a Unix time"),
        ):
            refused = await client.get("/dashboard/api/series", params=params)
            assert refused.status_code == 400 and problem in refused.json()["error"]

    run(scenario)


def test_with_keys_the_page_is_open_and_the_data_needs_one() -> None:
    access = AccessControl.from_sources(None, "an-environment-key-of-some-length")

    async def scenario(client: httpx.AsyncClient) -> None:
        page = await client.get("/dashboard")
        assert page.status_code == 200 and 'data-keys="required"' in page.text
        assert (await client.get("/dashboard/static/dashboard.js")).status_code == 200
        refused = await client.get("/dashboard/api/series")
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        headers = {"authorization": "Bearer an-environment-key-of-some-length"}
        assert (await client.get("/dashboard/api/series", headers=headers)).status_code == 200

    run(scenario, access)


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("/dashboard", Rule(None, public=True)),
        ("/dashboard/", Rule(None, public=True)),
        *((f"/dashboard/static/{name}", Rule(None, public=True)) for name in STATIC_TYPES),
        ("/dashboard/static/other.js", Rule(None)),
        ("/dashboard/static", Rule(None)),
        ("/dashboard/api/series", Rule(Scope.METRICS)),
        ("/dashboard/api/other", Rule(None)),
        ("/dashboards", Rule(None)),
    ],
)
def test_the_access_rules(path: str, rule: Rule) -> None:
    assert classify(path) == rule
