"""A Grafana dashboard for modelport's Prometheus series (`modelport alerts dashboard`).

Panels per model version: requests/s, p50 and p99 latency, error rate, batch size, requests in
flight and SLO alert state, filtered by `$model` and `$version` variables over a `$datasource`
variable (any Prometheus). Given a repository, one row per model with an `slo:` adds its
latency and error rate over the SLO's window with the objective drawn as a threshold line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from modelport.core.config import ModelConfig
from modelport.core.slo_config import SloConfig
from modelport.operations.prometheus_rules import (
    BY,
    FAILURE,
    LATENCY_BUCKETS,
    SERVER_ERRORS,
    SUCCESS,
    promql_duration,
)

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SELECTED = 'model=~"$model", version=~"$version"'
LEGEND = "{{model}} v{{version}}"
RATE = "$__rate_interval"
WIDTH = 12
HEIGHT = 8


def _latency(q: float, selector: str, window: str) -> str:
    return (
        f"histogram_quantile({q:g}, sum by ({BY}, le) "
        f"(rate({LATENCY_BUCKETS}{{{selector}}}[{window}])))"
    )


def _error_rate(selector: str, window: str) -> str:
    errors = f'{FAILURE}{{{selector}, reason=~"{SERVER_ERRORS}"}}'
    failed = f"sum by ({BY}) (rate({errors}[{window}]))"
    succeeded = f"sum by ({BY}) (rate({SUCCESS}{{{selector}}}[{window}]))"
    # a version without failures has no failure series: count it as 0 rather than leave a gap
    failed_or_none = f"({failed} or {succeeded} * 0)"
    return f"{failed_or_none} / ({succeeded} + {failed_or_none})"


def _target(expr: str, legend: str = LEGEND, ref: str = "A") -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def _panel(
    title: str,
    targets: list[dict[str, Any]],
    unit: str,
    position: tuple[int, int],
    *,
    kind: str = "timeseries",
    threshold: float | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    if threshold is not None:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}, {"color": "red", "value": threshold}],
        }
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    if kind == "state-timeline":
        defaults["mappings"] = [
            {
                "type": "value",
                "options": {
                    "0": {"text": "ok", "color": "green"},
                    "1": {"text": "firing", "color": "red"},
                },
            }
        ]
    return {
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"x": position[0], "y": position[1], "w": WIDTH, "h": HEIGHT},
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
    }


def _overview() -> list[dict[str, Any]]:
    return [
        _panel(
            "Requests per second",
            [_target(f"sum by ({BY}) (rate({SUCCESS}{{{SELECTED}}}[{RATE}]))")],
            "reqps",
            (0, 0),
        ),
        _panel(
            "Latency p50 / p99 (successful requests)",
            [
                _target(_latency(0.5, SELECTED, RATE), f"p50 {LEGEND}", "A"),
                _target(_latency(0.99, SELECTED, RATE), f"p99 {LEGEND}", "B"),
            ],
            "s",
            (WIDTH, 0),
        ),
        _panel(
            "Error rate (unavailable, timeout, internal)",
            [_target(_error_rate(SELECTED, RATE))],
            "percentunit",
            (0, HEIGHT),
        ),
        _panel(
            "Batch size (inferences per run)",
            [
                _target(
                    f"sum by ({BY}) (rate(modelport_batch_size_sum{{{SELECTED}}}[{RATE}])) / "
                    f"sum by ({BY}) (rate(modelport_batch_size_count{{{SELECTED}}}[{RATE}]))"
                )
            ],
            "short",
            (WIDTH, HEIGHT),
        ),
        _panel(
            "Requests in flight (queued or running)",
            [_target(f"sum by ({BY}) (modelport_inflight_requests{{{SELECTED}}})")],
            "short",
            (0, 2 * HEIGHT),
        ),
        _panel(
            "SLO alert state",
            [_target(f"modelport_alert_state{{{SELECTED}}}", f"{LEGEND} {{{{slo}}}}")],
            "short",
            (WIDTH, 2 * HEIGHT),
            kind="state-timeline",
        ),
    ]


def _slo_row(name: str, slo: SloConfig, top: int) -> list[dict[str, Any]]:
    window = promql_duration(slo.window)
    selector = f"model={json.dumps(name)}"
    panels: list[dict[str, Any]] = [
        {
            "type": "row",
            "title": f"SLO: {name} (window {window})",
            "collapsed": False,
            "gridPos": {"x": 0, "y": top, "w": 2 * WIDTH, "h": 1},
            "panels": [],
        }
    ]
    if slo.p99_latency is not None:
        panels.append(
            _panel(
                f"{name}: p99 latency over {window}",
                [_target(_latency(0.99, selector, window))],
                "s",
                (0, top + 1),
                threshold=slo.p99_latency,
            )
        )
    if slo.error_rate is not None:
        panels.append(
            _panel(
                f"{name}: error rate over {window}",
                [_target(_error_rate(selector, window))],
                "percentunit",
                (WIDTH, top + 1),
                threshold=slo.error_rate,
            )
        )
    return panels


def _variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
    }


def dashboard(models: Sequence[tuple[str, ModelConfig]] = ()) -> dict[str, Any]:
    panels = _overview()
    top = 3 * HEIGHT
    for name, config in sorted(models, key=lambda pair: pair[0]):
        if config.slo is not None:
            panels += _slo_row(name, config.slo, top)
            top += HEIGHT + 1
    for number, panel in enumerate(panels, 1):
        panel["id"] = number
    return {
        "title": "modelport",
        "uid": "modelport",
        "tags": ["modelport"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                },
                _variable("model", f"label_values({SUCCESS}, model)"),
                _variable("version", f'label_values({SUCCESS}{{model=~"$model"}}, version)'),
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }
