"""The audit log and the access metrics (security/audit.py, observability/access_metrics.py)."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from modelport.observability.access_metrics import MAX_CLIENTS, AccessMetrics
from modelport.security.audit import REFUSAL_LINES, AuditLog
from modelport.security.policy import KeyForbidden, KeyRateLimited, KeyRefused


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_failed_attempts_per_client_are_bounded() -> None:
    registry = CollectorRegistry()
    metrics = AccessMetrics(registry)
    for number in range(MAX_CLIENTS + 500):
        metrics.refused("unknown_key", f"10.0.{number // 256}.{number % 256}")
    metrics.refused("unknown_key", "10.0.0.0")  # seen before: still its own series
    clients = {
        s.labels["client"]
        for family in registry.collect()
        if family.name == "modelport_access_failed_attempts"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert len(clients) == MAX_CLIENTS + 1  # the first MAX_CLIENTS, plus "other"
    assert sample(registry, "modelport_access_failed_attempts_total", client="other") == 500
    assert sample(registry, "modelport_access_failed_attempts_total", client="10.0.0.0") == 2
    assert sample(registry, "modelport_access_refused_total", reason="unknown_key") == 1501


def test_refusals_are_counted_by_reason_and_rate_limits_by_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    audit = AuditLog(AccessMetrics(registry))
    with caplog.at_level(logging.INFO, logger="modelport.audit"):
        audit.refused(KeyRefused("missing", "m"), "1.2.3.4")
        audit.refused(KeyForbidden("ci", "model", "API key 'ci' may not use model 'x'"), "1.2.3.4")
        audit.refused(KeyRateLimited("ci", "over", 1.0), "1.2.3.4")
    assert sample(registry, "modelport_access_refused_total", reason="missing_key") == 1
    assert sample(registry, "modelport_access_refused_total", reason="model") == 1
    assert sample(registry, "modelport_key_rate_limited_total", key="ci") == 1
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "refused: no API key from 1.2.3.4",
        "refused: key 'ci' from 1.2.3.4: API key 'ci' may not use model 'x'",
    ]  # a key over its rate is counted, not logged: the key itself was fine


def test_refusal_lines_are_rate_limited_and_say_how_many_were_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    audit = AuditLog(clock=lambda: now[0])
    refusals = REFUSAL_LINES.burst + 300
    with caplog.at_level(logging.WARNING, logger="modelport.audit"):
        for _ in range(refusals):  # all at one instant
            audit.refused(KeyRefused("unknown", "unknown API key"), "6.6.6.6")
        now[0] = 1.0  # a second later, tokens are back
        audit.refused(KeyRefused("unknown", "unknown API key"), "6.6.6.6")
    assert len(caplog.records) == REFUSAL_LINES.burst + 1
    left_out = refusals - REFUSAL_LINES.burst
    assert caplog.records[-1].getMessage() == (
        f"refused: an unknown API key from 6.6.6.6 ({left_out} refusals since the last line "
        "were not logged)"
    )
