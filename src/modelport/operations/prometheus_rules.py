"""The models' SLOs as Prometheus rules (`modelport alerts rules`), for teams who alert from
their own Prometheus: recording rules per window, alerting rules per model and objective.

They say what the server's own evaluator says (core/slo.py) in PromQL, over the series the
server exports: p99 of `modelport_request_duration_seconds` (successful requests), the error
rate as server failures (unavailable, timeout, internal) over those plus successes, and the same
`min_requests` floor. Rates need two scrapes inside the window: scrape at least every window/4.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from modelport.core.config import ModelConfig
from modelport.core.slo import ALERT_NAMES, SEVERITY, Objective, format_value, format_window
from modelport.core.slo_config import SloConfig

SERVER_ERRORS = "unavailable|timeout|internal"
"""The failure reasons that count against an error rate (observability/window.py's kinds)."""
SUCCESS = "modelport_inference_request_success_total"
FAILURE = "modelport_inference_request_failure_total"
LATENCY_BUCKETS = "modelport_request_duration_seconds_bucket"
BY = "model, version"


def promql_duration(seconds: float) -> str:
    """'5m', '10s', '1h', or whole milliseconds ('1500ms'): PromQL takes no fractions."""
    if seconds == int(seconds):
        return format_window(seconds)
    return f"{round(seconds * 1000)}ms"


def p99_series(window: str) -> str:
    return f"modelport:request_duration_seconds:p99_rate{window}"


def errors_series(window: str) -> str:
    return f"modelport:inference_server_errors:rate{window}"


def success_series(window: str) -> str:
    return f"modelport:inference_success:rate{window}"


def error_ratio_series(window: str) -> str:
    return f"modelport:inference_server_errors:ratio_rate{window}"


def recording_rules(window: str) -> list[dict[str, str]]:
    """Per version over one window. A version with no failures yet has no failure series: the
    `or ... * 0` gives it an error rate of 0 instead of none (and likewise for successes)."""
    errors, success = errors_series(window), success_series(window)
    return [
        {
            "record": p99_series(window),
            "expr": f"histogram_quantile(0.99, sum by ({BY}, le) "
            f"(rate({LATENCY_BUCKETS}[{window}])))",
        },
        {
            "record": errors,
            "expr": f'sum by ({BY}) (rate({FAILURE}{{reason=~"{SERVER_ERRORS}"}}[{window}])) '
            f"or sum by ({BY}) (rate({SUCCESS}[{window}])) * 0",
        },
        {
            "record": success,
            "expr": f"sum by ({BY}) (rate({SUCCESS}[{window}])) or {errors} * 0",
        },
        {
            "record": error_ratio_series(window),
            "expr": f"{errors} / ({success} + {errors})",
        },
    ]


def alerting_rules(name: str, slo: SloConfig) -> list[dict[str, Any]]:
    window = promql_duration(slo.window)
    seconds = f"{slo.window:g}"
    model = f"{{model={json.dumps(name)}}}"
    described = format_window(slo.window)
    rules: list[dict[str, Any]] = []
    if slo.p99_latency is not None:
        threshold = format_value("p99_latency", slo.p99_latency)
        rules.append(
            _alert(
                "p99_latency",
                name,
                slo,
                f"{p99_series(window)}{model} > {slo.p99_latency:g}\n"
                f"and on ({BY}) {success_series(window)}{model} * {seconds} "
                f">= {slo.min_requests}",
                summary="{{ $labels.model }} version {{ $labels.version }}: p99_latency "
                f"{{{{ $value | humanizeDuration }}}} > {threshold} over {described}",
                description="The 99th percentile latency of successful requests to "
                "{{ $labels.model }} version {{ $labels.version }} over the last "
                f"{described} is {{{{ $value | humanizeDuration }}}}; the objective is "
                f"{threshold}.",
            )
        )
    if slo.error_rate is not None:
        threshold = format_value("error_rate", slo.error_rate)
        completed = f"({success_series(window)}{model} + {errors_series(window)}{model})"
        rules.append(
            _alert(
                "error_rate",
                name,
                slo,
                f"{error_ratio_series(window)}{model} > {slo.error_rate:g}\n"
                f"and on ({BY}) {completed} * {seconds} >= {slo.min_requests}",
                summary="{{ $labels.model }} version {{ $labels.version }}: error_rate "
                f"{{{{ $value | humanizePercentage }}}} > {threshold} over {described}",
                description="{{ $value | humanizePercentage }} of the requests to "
                "{{ $labels.model }} version {{ $labels.version }} over the last "
                f"{described} failed for the server's reasons ({SERVER_ERRORS.replace('|', ', ')}"
                f"); the objective is {threshold}.",
            )
        )
    return rules


def _alert(
    objective: Objective, name: str, slo: SloConfig, expr: str, *, summary: str, description: str
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": ALERT_NAMES[objective], "expr": expr}
    if slo.for_seconds:
        rule["for"] = promql_duration(slo.for_seconds)
    rule["labels"] = {
        "severity": SEVERITY[objective],
        "slo": objective,
        "model": name,
        "version": "{{ $labels.version }}",
    }
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


def rule_file(models: Sequence[tuple[str, ModelConfig]]) -> dict[str, Any]:
    """A Prometheus rule file: one recording group (every window an SLO uses) and one alerting
    group (every model with an `slo:`), in model name order."""
    with_slo = sorted(
        ((name, config.slo) for name, config in models if config.slo is not None),
        key=lambda pair: pair[0],
    )
    if not with_slo:
        return {"groups": []}
    windows = sorted({slo.window for _, slo in with_slo})
    return {
        "groups": [
            {
                "name": "modelport-slo-recording",
                "rules": [
                    rule for window in windows for rule in recording_rules(promql_duration(window))
                ],
            },
            {
                "name": "modelport-slo-alerts",
                "rules": [rule for name, slo in with_slo for rule in alerting_rules(name, slo)],
            },
        ]
    }
