"""SLO alerts end to end: `modelport alerts rules` passes `promtool check rules` and a `promtool
test rules` file; a real Prometheus scraping a real `modelport serve` with those rules fires the
latency alert for a model made slow on purpose, and so does the server itself (GET /v2/alerts,
the modelport_alert_state gauge), while a fast model alerts nowhere. Every panel of
`modelport alerts dashboard` is a query that Prometheus runs."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modelport.examples import onnx_models
from tests.e2e.slo_support import (
    Load,
    Prometheus,
    need,
    prometheus,
    python_version,
    sleeping_model,
    write_config,
)
from tests.support import Server, add_model, run_cli, run_server, wait_until

pytestmark = pytest.mark.e2e

SLOW_SLO = {"p99_latency": "20ms", "window": "10s", "min_requests": 5}
FAST_SLO = "slo: {p99_latency: 5s, error_rate: 1%, window: 10s}\n"
FLAKY_SLO = "slo: {error_rate: 1%, window: 10s, for: 5s}\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slo-repo")
    python_version(root, "slow", 1, sleeping_model(0.06))
    write_config(root, "slow", {"slo": SLOW_SLO})
    add_model(root, "fast", onnx_models.offset(1.0), config=FAST_SLO)
    add_model(root, "flaky", onnx_models.offset(1.0), version=2, config=FLAKY_SLO)
    add_model(root, "plain", onnx_models.offset(1.0))  # no slo: no rules
    return root


@pytest.fixture(scope="module")
def rules(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rules") / "modelport-rules.yml"
    done = run_cli("alerts", "rules", "--model-repository", str(repo), "-o", str(out), cwd=repo)
    assert done.returncode == 0, done.stderr
    return out


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need("promtool"), *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_the_rules_pass_promtool_check(rules: Path) -> None:
    checked = promtool("check", "rules", str(rules), cwd=rules.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout  # 4 recording (one window), 4 alerting
    groups = yaml.safe_load(rules.read_text())["groups"]
    alerts = groups[1]["rules"]
    assert [(a["alert"], a["labels"]["model"]) for a in alerts] == [
        ("ModelportP99LatencySLO", "fast"),
        ("ModelportErrorRateSLO", "fast"),
        ("ModelportErrorRateSLO", "flaky"),
        ("ModelportP99LatencySLO", "slow"),
    ]
    assert alerts[2]["for"] == "5s" and "for" not in alerts[0]
    assert {a["labels"]["severity"] for a in alerts} == {"warning", "critical"}


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    text = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def test_the_rules_pass_a_promtool_unit_test(rules: Path) -> None:
    success = "modelport_inference_request_success_total"
    failure = "modelport_inference_request_failure_total"
    bucket = "modelport_request_duration_seconds_bucket"
    slow = {"model": "slow", "version": "1"}
    flaky = {"model": "flaky", "version": "2"}
    idle = {"model": "flaky", "version": "1"}
    inputs = [
        # slow: 10 requests/s, every one between 50 and 100 ms (p99 = 99.5 ms by interpolation)
        series(bucket, "0+0x60", **slow, le="0.05"),
        series(bucket, "0+10x60", **slow, le="0.1"),
        series(bucket, "0+10x60", **slow, le="+Inf"),
        series(success, "0+10x60", **slow),
        # fast: every request under 5 ms
        series(bucket, "0+10x60", model="fast", version="1", le="0.005"),
        series(bucket, "0+10x60", model="fast", version="1", le="+Inf"),
        series(success, "0+10x60", model="fast", version="1"),
        # flaky v2: 10 % server errors; its many client errors do not count
        series(success, "0+9x60", **flaky),
        series(failure, "0+1x60", **flaky, reason="internal"),
        series(failure, "0+50x60", **flaky, reason="invalid_input"),
        # flaky v1: half its requests fail, but 10 in the window are under min_requests (20)
        series(success, "0+0.5x60", **idle),
        series(failure, "0+0.5x60", **idle, reason="timeout"),
    ]
    expected_slow = {
        "exp_labels": {**slow, "severity": "warning", "slo": "p99_latency"},
        "exp_annotations": {
            "summary": "slow version 1: p99_latency 99.5ms > 20ms over 10s",
            "description": "The 99th percentile latency of successful requests to slow version "
            "1 over the last 10s is 99.5ms; the objective is 20ms.",
        },
    }
    expected_flaky = {
        "exp_labels": {**flaky, "severity": "critical", "slo": "error_rate"},
        "exp_annotations": {
            "summary": "flaky version 2: error_rate 10% > 1% over 10s",
            "description": "10% of the requests to flaky version 2 over the last 10s failed for "
            "the server's reasons (unavailable, timeout, internal); the objective is 1%.",
        },
    }
    tests = {
        "rule_files": [rules.name],
        "evaluation_interval": "1s",
        "tests": [
            {
                "interval": "1s",
                "input_series": inputs,
                "alert_rule_test": [
                    {
                        "eval_time": "30s",
                        "alertname": "ModelportP99LatencySLO",
                        "exp_alerts": [expected_slow],
                    },
                    {
                        "eval_time": "30s",
                        "alertname": "ModelportErrorRateSLO",
                        "exp_alerts": [expected_flaky],
                    },
                    # flaky's `for: 5s`: pending, not yet firing, 3 s after its breach began
                    {"eval_time": "4s", "alertname": "ModelportErrorRateSLO", "exp_alerts": []},
                ],
                "promql_expr_test": [
                    {
                        "expr": "modelport:inference_server_errors:ratio_rate10s",
                        "eval_time": "30s",
                        "exp_samples": [
                            {
                                "labels": _labels(
                                    "modelport:inference_server_errors:ratio_rate10s", flaky
                                ),
                                "value": 0.1,
                            },
                            {
                                "labels": _labels(
                                    "modelport:inference_server_errors:ratio_rate10s", idle
                                ),
                                "value": 0.5,
                            },
                            {
                                "labels": _labels(
                                    "modelport:inference_server_errors:ratio_rate10s",
                                    {"model": "fast", "version": "1"},
                                ),
                                "value": 0,
                            },
                            {
                                "labels": _labels(
                                    "modelport:inference_server_errors:ratio_rate10s", slow
                                ),
                                "value": 0,
                            },
                        ],
                    }
                ],
            }
        ],
    }
    test_file = rules.parent / "modelport-rules.test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    tested = promtool("test", "rules", test_file.name, cwd=rules.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def _labels(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("slo-logs") / "server.log"
    with run_server(repo, log, "--slo-interval", "1") as running:
        yield running
    assert "Traceback" not in log.read_text(), log.read_text()


def firing(alerts: list[dict[str, Any]], name: str, model: str) -> list[dict[str, Any]]:
    return [
        a
        for a in alerts
        if a["labels"]["alertname"] == name
        and a["labels"]["model"] == model
        and a["state"] == "firing"
    ]


def test_a_slow_model_fires_in_prometheus_and_in_the_server(
    server: Server, rules: Path, repo: Path, tmp_path: Path
) -> None:
    with prometheus(tmp_path, server.url, rules) as prom:
        load = Load(server.base, ["/v2/models/slow/infer", "/v2/models/fast/infer"]).start()
        try:

            def prometheus_fires() -> bool:
                alerts = prom.get("/api/v1/alerts")["alerts"]
                return bool(firing(alerts, "ModelportP99LatencySLO", "slow"))

            wait_until(prometheus_fires, "the slow model's alert firing in Prometheus", 120)
            [alert] = firing(prom.get("/api/v1/alerts")["alerts"], "ModelportP99LatencySLO", "slow")
            assert alert["labels"]["version"] == "1"
            assert alert["labels"]["severity"] == "warning"
            assert alert["annotations"]["summary"].startswith("slow version 1: p99_latency ")
            assert float(alert["value"]) > 0.02

            def server_fires() -> bool:
                report = httpx.get(f"{server.base}/v2/alerts", timeout=10).json()
                return any(
                    a["model"] == "slow" and a["state"] == "firing" for a in report["alerts"]
                )

            wait_until(server_fires, "the slow model's alert firing in the server", 60)
            report = httpx.get(f"{server.base}/v2/alerts", timeout=10).json()
            [own] = [a for a in report["alerts"] if a["model"] == "slow"]
            assert own["name"] == "ModelportP99LatencySLO" and own["slo"] == "p99_latency"
            assert own["version"] == "1" and own["threshold"] == 0.02 and own["window_s"] == 10
            assert own["value"] > 0.02 and own["ended"] is None
            assert own["summary"].startswith("slow version 1: p99_latency ")
            assert not [a for a in report["alerts"] if a["model"] == "fast"]
            metrics = httpx.get(f"{server.base}/metrics", timeout=10).text
            assert _gauge(metrics, "slow", "p99_latency") == 1
            assert _gauge(metrics, "fast", "p99_latency") == 0
            assert _gauge(metrics, "fast", "error_rate") == 0
            assert not firing(
                prom.get("/api/v1/alerts")["alerts"], "ModelportP99LatencySLO", "fast"
            )
            _dashboard_queries_run(prom, repo)
        finally:
            load.finish()
        fast = [r for r in load.results if r[0].endswith("fast/infer")]
        assert fast and all(status == 200 for _, _, status, _ in fast)


def _gauge(metrics: str, model: str, slo: str) -> float:
    pattern = rf'^modelport_alert_state{{model="{model}",slo="{slo}",version="1"}} (\S+)$'
    match = re.search(pattern, metrics, re.MULTILINE)
    assert match, metrics
    return float(match.group(1))


def _dashboard_queries_run(prom: Prometheus, repo: Path) -> None:
    done = run_cli("alerts", "dashboard", "--model-repository", str(repo), cwd=repo)
    assert done.returncode == 0, done.stderr
    board = json.loads(done.stdout)
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 9
    for expr in exprs:
        query = (
            expr.replace("$model", ".*").replace("$version", ".*").replace("$__rate_interval", "1m")
        )
        result = prom.get("/api/v1/query", query=query)
        assert result["resultType"] == "vector", (query, result)
    # the slow model's SLO row shows data once Prometheus has it
    [p99] = [p for p in board["panels"] if p["title"] == "slow: p99 latency over 10s"]
    assert prom.get("/api/v1/query", query=p99["targets"][0]["expr"])["result"]
