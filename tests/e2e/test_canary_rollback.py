"""Automatic canary rollback under load, on a real `modelport serve` (model control modes none
and poll):
a canary that fails 20 % of its requests while stable is fine is rolled back within its window;
no request sent after the switch fails, stable's requests never fail, config.yaml changes in one
atomic step (a reader polling it throughout never sees anything but the old or the new split),
the index shows the reason, and a model with `auto_rollback: false` only alerts."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.slo_support import (
    Load,
    failing_model,
    python_version,
    sleeping_model,
    write_config,
)
from tests.support import Server, run_server, wait_until

pytestmark = pytest.mark.e2e

WINDOW_S = 10
INTERVAL_S = 1
SPLIT = {
    "version_policy": "all",
    "labels": {"stable": 1, "canary": 2},
    "traffic": {1: 80, 2: 20},
}
SLO = {"error_rate": "1%", "window": f"{WINDOW_S}s", "min_requests": 10}
WAIT_S = 90
"""Ends a test whose server never rolls back; nothing passes or fails by it."""


@pytest.fixture(scope="module", params=["none", "poll"])
def mode(request: pytest.FixtureRequest) -> str:
    """The model control mode: the rollback is applied in the running server either way (poll
    mode also sees the config.yaml change and finds nothing more to do)."""
    return str(request.param)


@pytest.fixture(scope="module")
def repo(mode: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp(f"canary-repo-{mode}")
    for name, auto in (("scorer", True), ("manual", False)):
        python_version(root, name, 1, sleeping_model(0.002))
        python_version(root, name, 2, failing_model(every=5))
        write_config(root, name, {**SPLIT, "slo": {**SLO, "auto_rollback": auto}})
    return root


@pytest.fixture(scope="module")
def server(mode: str, repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("canary-logs") / "server.log"
    control = ["--model-control-mode", mode, "--repository-poll-secs", "0.5"]
    with run_server(repo, log, "--slo-interval", str(INTERVAL_S), *control) as running:
        yield running
    # the canaries' failures are logged with their tracebacks; nothing else may fail
    raised = re.findall(r"^(\w+(?:Error|Exception)\b.*)$", log.read_text(), re.MULTILINE)
    assert set(raised) <= {"RuntimeError: the canary broke on purpose"}, log.read_text()


class ConfigReader:
    """Reads config.yaml over and over while the load runs: every read must parse and hold
    either the old split or the new one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.splits: list[dict[int, float]] = []
        self.problems: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        while not self.stop.is_set():
            try:
                raw = yaml.safe_load(self.path.read_text())
                split = {int(k): float(v) for k, v in raw["traffic"].items()}
                if not self.splits or self.splits[-1] != split:
                    self.splits.append(split)
            except Exception as exc:
                self.problems.append(repr(exc))
            time.sleep(0.002)

    def __enter__(self) -> ConfigReader:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def alerts(server: Server) -> dict[str, Any]:
    return dict(httpx.get(f"{server.base}/v2/alerts", timeout=10).json())


def test_a_failing_canary_is_rolled_back_under_load(server: Server, repo: Path) -> None:
    started = time.time()
    load = Load(server.base, ["/v2/models/scorer/infer", "/v2/models/scorer/versions/stable/infer"])
    with ConfigReader(repo / "scorer" / "config.yaml") as reader:
        load.start(per_path=2)
        try:
            wait_until(
                lambda: any(r["model"] == "scorer" for r in alerts(server)["rollbacks"]),
                "the canary's rollback",
                WAIT_S,
            )
            switched = time.time()
            time.sleep(3)  # keep the load on after the switch
        finally:
            load.finish()
    [rollback] = [r for r in alerts(server)["rollbacks"] if r["model"] == "scorer"]
    assert (rollback["from_version"], rollback["to_version"]) == ("2", "1")
    assert rollback["reason"].startswith("rolled back: error_rate ")
    assert rollback["reason"].endswith(f"> 1% over {WINDOW_S}s")
    at = _seconds(rollback["at"])

    routed = [r for r in load.results if r[0] == "/v2/models/scorer/infer"]
    before = [r for r in routed if r[1] < at]
    after = [r for r in routed if r[1] > at]
    assert any(status == 500 for _, _, status, _ in before)  # the canary did fail
    first_failure = min(sent for _, sent, status, _ in before if status == 500)
    # judged over its 10 s window, evaluated every second: the slack is for a busy machine
    assert at - first_failure < WINDOW_S + 10
    assert len(after) > 20 and switched > at
    assert [s for _, _, s, _ in after if s != 200] == []  # no request after the switch failed
    assert {version for _, _, _, version in after} == {"1"}
    stable = [r for r in load.results if r[0].endswith("versions/stable/infer")]
    assert stable and {(s, v) for _, _, s, v in stable} == {(200, "1")}
    failures = [detail for _, _, status, detail in before if status != 200]
    assert all("model 'scorer' version 2 failed" in str(d) for d in failures), failures[:5]

    assert reader.problems == []
    assert reader.splits == [{1: 80, 2: 20}, {1: 100, 2: 0}]
    on_disk = yaml.safe_load((repo / "scorer" / "config.yaml").read_text())
    assert on_disk["labels"] == {"stable": 1, "canary": 2}  # the rest of the file is kept
    assert on_disk["slo"]["error_rate"] == "1%"
    assert sorted(p.name for p in (repo / "scorer").iterdir()) == ["1", "2", "config.yaml"]

    rows = httpx.post(f"{server.base}/v2/repository/index", timeout=10).json()
    by_version = {row["version"]: row for row in rows if row["name"] == "scorer"}
    assert by_version["2"]["reason"] == rollback["reason"]
    assert by_version["2"]["state"] == "READY" and by_version["2"]["traffic"] == 0
    assert by_version["1"]["traffic"] == 100 and by_version["1"]["reason"] == ""
    report = alerts(server)
    mine = {
        (a["name"], a["version"], a["state"]) for a in report["alerts"] if a["model"] == "scorer"
    }
    assert ("ModelportCanaryRolledBack", "2", "firing") in mine
    assert ("ModelportErrorRateSLO", "2", "firing") in mine
    log = server.log_text()
    assert "WARNING modelport.alerts: model scorer: moving canary version 2's traffic back" in log
    assert rollback["reason"] in log
    print(f"rolled back {at - started:.1f} s after the load began ({len(routed)} requests)")


def test_auto_rollback_false_only_alerts(server: Server, repo: Path) -> None:
    config = repo / "manual" / "config.yaml"
    before = config.read_text()
    load = Load(server.base, ["/v2/models/manual/infer"]).start(per_path=2)
    try:

        def firing() -> bool:
            return any(
                a["model"] == "manual" and a["version"] == "2" and a["state"] == "firing"
                for a in alerts(server)["alerts"]
            )

        wait_until(firing, "manual's canary alert", WAIT_S)
        fired = time.time()
        time.sleep(2 * INTERVAL_S + 1)  # evaluations after the alert fired: still no rollback
    finally:
        load.finish()
    assert config.read_text() == before
    assert [r for r in alerts(server)["rollbacks"] if r["model"] == "manual"] == []
    late = [r for r in load.results if r[1] > fired]
    assert any(version == "2" or status == 500 for _, _, status, version in late), late[:50]
    rows = httpx.post(f"{server.base}/v2/repository/index", timeout=10).json()
    [row] = [r for r in rows if r["name"] == "manual" and r["version"] == "2"]
    assert row["traffic"] == 20 and row["reason"] == ""


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
