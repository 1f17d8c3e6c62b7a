"""What the SLO work shows the outside: `modelport alerts rules|dashboard` output, GET /v2/alerts
(route and access rule), the --alert-webhook setting, and config.yaml's split moved on disk by
repository/publish.shift_traffic."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner
from pydantic import ValidationError
from starlette.applications import Starlette

from modelport.cli.main import cli
from modelport.core.alerts import AlertBook, AlertsReport
from modelport.core.config import config_from_mapping
from modelport.core.slo import Reading
from modelport.frontends.rest.access_guard import classify
from modelport.frontends.rest.alerts import alert_routes
from modelport.operations.grafana import dashboard
from modelport.operations.prometheus_rules import promql_duration, rule_file
from modelport.repository.publish import PublishError, shift_traffic
from modelport.security.policy import Scope
from modelport.settings import ServerSettings

SLO = {"p99_latency": "50ms", "error_rate": "1%", "window": "5m"}


def test_rules_share_recording_rules_per_window_and_alert_per_model() -> None:
    models = [
        ("b", config_from_mapping({"slo": SLO}, "b")),
        ("a", config_from_mapping({"slo": {"error_rate": "2%", "window": "5m", "for": "1m"}}, "a")),
        ("c", config_from_mapping({"slo": {"p99_latency": "1s", "window": "30s"}}, "c")),
        ("plain", config_from_mapping({}, "plain")),
    ]
    recording, alerting = rule_file(models)["groups"]
    assert [r["record"] for r in recording["rules"]] == [
        "modelport:request_duration_seconds:p99_rate30s",
        "modelport:inference_server_errors:rate30s",
        "modelport:inference_success:rate30s",
        "modelport:inference_server_errors:ratio_rate30s",
        "modelport:request_duration_seconds:p99_rate5m",
        "modelport:inference_server_errors:rate5m",
        "modelport:inference_success:rate5m",
        "modelport:inference_server_errors:ratio_rate5m",
    ]
    p99 = recording["rules"][0]["expr"]
    assert p99 == (
        "histogram_quantile(0.99, sum by (model, version, le) "
        "(rate(modelport_request_duration_seconds_bucket[30s])))"
    )
    assert 'reason=~"unavailable|timeout|internal"' in recording["rules"][1]["expr"]
    names = [(r["alert"], r["labels"]["model"]) for r in alerting["rules"]]
    assert names == [
        ("ModelportErrorRateSLO", "a"),
        ("ModelportP99LatencySLO", "b"),
        ("ModelportErrorRateSLO", "b"),
        ("ModelportP99LatencySLO", "c"),
    ]
    a = alerting["rules"][0]
    assert a["for"] == "1m" and a["labels"]["severity"] == "critical"
    assert a["expr"] == (
        'modelport:inference_server_errors:ratio_rate5m{model="a"} > 0.02\n'
        "and on (model, version) (modelport:inference_success:rate5m"
        '{model="a"} + modelport:inference_server_errors:rate5m{model="a"}) * 300 >= 20'
    )
    b_latency = alerting["rules"][1]
    assert "for" not in b_latency and b_latency["labels"]["severity"] == "warning"
    assert b_latency["expr"].startswith(
        'modelport:request_duration_seconds:p99_rate5m{model="b"} > 0.05\n'
    )
    assert set(b_latency["annotations"]) == {"summary", "description"}
    assert rule_file([("plain", config_from_mapping({}, "plain"))]) == {"groups": []}
    assert promql_duration(1.5) == "1500ms" and promql_duration(3600) == "1h"


def test_the_dashboard_has_its_variables_and_panels() -> None:
    board = dashboard([("m", config_from_mapping({"slo": SLO}, "m"))])
    assert board["schemaVersion"] >= 36 and board["uid"] == "modelport"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["query"]["query"].startswith("label_values(")
    titles = [panel["title"] for panel in board["panels"]]
    for title in ("Requests per second", "Latency p50 / p99", "Error rate", "Batch size"):
        assert any(t.startswith(title) for t in titles), titles
    assert any(t.startswith("Requests in flight") for t in titles)
    assert "SLO alert state" in titles and "SLO: m (window 5m)" in titles
    [p99] = [p for p in board["panels"] if p["title"] == "m: p99 latency over 5m"]
    steps = p99["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[1]["value"] == pytest.approx(0.05)
    charts = [p for p in board["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in charts)
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    bare = dashboard()
    assert not any(p["title"].startswith("SLO:") for p in bare["panels"])


def test_the_cli_writes_rules_and_a_dashboard(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.yaml").write_text(yaml.safe_dump({"slo": SLO}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.yaml").write_text("slo: {error_rate: 5}\n")
    runner = CliRunner()
    out = tmp_path / "rules.yml"
    done = runner.invoke(
        cli, ["alerts", "rules", "--model-repository", str(tmp_path), "-o", str(out)]
    )
    assert done.exit_code == 0, done.output
    assert "warning: skipping broken: invalid config.yaml: slo.error_rate" in done.output
    groups = yaml.safe_load(out.read_text())["groups"]
    assert [r["alert"] for r in groups[1]["rules"]] == [
        "ModelportP99LatencySLO",
        "ModelportErrorRateSLO",
    ]
    shown = runner.invoke(cli, ["alerts", "dashboard"])
    assert shown.exit_code == 0 and json.loads(shown.output)["title"] == "modelport"


def board_with_one_firing_alert() -> AlertBook:
    book = AlertBook()
    bad = Reading("error_rate", 0.2, 0.01, 100, True)
    book.observe("m", "2", bad, 300, 0, now=1, wall=1.8e9)
    book.observe("m", "2", bad, 300, 0, now=2, wall=1.8e9 + 5)
    return book


def test_get_v2_alerts_answers_the_report() -> None:
    book = board_with_one_firing_alert()
    app = Starlette(routes=alert_routes(book))

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            reply = await client.get("/v2/alerts")
        assert reply.status_code == 200
        report: AlertsReport = reply.json()
        [alert] = report["alerts"]
        assert alert == {
            "name": "ModelportErrorRateSLO",
            "model": "m",
            "version": "2",
            "slo": "error_rate",
            "state": "firing",
            "value": 0.2,
            "threshold": 0.01,
            "window_s": 300,
            "since": "2027-01-15T08:00:05.000Z",
            "ended": None,
            "summary": "m version 2: error_rate 20% > 1% over 5m",
        }
        assert report["rollbacks"] == []

    asyncio.run(main())


def test_v2_alerts_needs_the_metrics_scope() -> None:
    assert classify("/v2/alerts").scope is Scope.METRICS
    assert classify("/v2/alerts/x").scope is None  # no such route: any valid key, then 404


def test_the_webhook_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPORT_ALERT_WEBHOOK", "http://a.test/hook, https://b.test:8443/x")
    settings = ServerSettings()
    assert settings.alert_webhook == ("http://a.test/hook", "https://b.test:8443/x")
    assert settings.slo_interval == 5
    monkeypatch.delenv("MODELPORT_ALERT_WEBHOOK")
    given = ServerSettings(alert_webhook=("http://c.test/h",), http_port=9000)
    assert given.alert_webhook == ("http://c.test/h",)
    assert given.external_url() == "http://127.0.0.1:9000"
    with pytest.raises(ValidationError, match="takes an http:// or https:// URL") as err:
        ServerSettings(alert_webhook=("ftp://secret-token@c.test/h",))
    [problem] = err.value.errors()
    assert "secret-token" not in problem["msg"]  # what `modelport serve` prints
    with pytest.raises(ValueError, match="slo_interval"):
        ServerSettings(slo_interval=0)


def test_shift_traffic_rewrites_the_split_and_keeps_the_rest(tmp_path: Path) -> None:
    model = tmp_path / "m"
    for version in ("1", "2"):
        (model / version).mkdir(parents=True)
    raw = {"labels": {"stable": 1, "canary": 2}, "traffic": {1: 90, 2: 10}, "slo": SLO}
    (model / "config.yaml").write_text(yaml.safe_dump(raw))
    assert shift_traffic(tmp_path, "m", 2, 1) is True
    written = yaml.safe_load((model / "config.yaml").read_text())
    assert written == {**raw, "traffic": {1: 100.0, 2: 0.0}}
    assert sorted(p.name for p in model.iterdir()) == ["1", "2", "config.yaml"]
    assert shift_traffic(tmp_path, "m", 2, 1) is False  # nothing left to move
    assert shift_traffic(tmp_path, "m", 3, 1) is False
    with pytest.raises(PublishError):
        shift_traffic(tmp_path, "../etc", 2, 1)
