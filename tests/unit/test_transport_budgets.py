"""The budgets both ports share, and the refusals counter whose log line is throttled."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from modelport.frontends.budgets import Budgets
from modelport.observability.transport_metrics import LOG_EVERY_SECS, TransportRefusals


def test_budgets_give_each_port_its_own_cap_and_share_one_byte_budget() -> None:
    budgets = Budgets.create(max_connections=3, pending_limit=1000)
    assert budgets.http is not budgets.grpc
    assert (budgets.http.limit, budgets.grpc.limit, budgets.pending.limit) == (3, 3, 1000)
    assert all(budgets.http.admit() for _ in range(3))
    assert not budgets.http.admit()
    assert budgets.grpc.admit()  # a flood on one port leaves the other its room


def test_the_default_cap_is_a_share_of_the_descriptor_limit() -> None:
    budgets = Budgets.create(max_connections=None, pending_limit=1 << 20)
    assert 16 <= budgets.http.limit <= 10_000


def test_refusals_are_counted_each_time_and_logged_at_most_every_ten_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    registry = CollectorRegistry()
    refusals = TransportRefusals(registry, clock=lambda: now[0])
    hook = refusals.for_port("http")
    with caplog.at_level(logging.WARNING, logger="modelport"):
        for _ in range(1000):
            hook("connections")
        hook("header_timeout")
        now[0] += LOG_EVERY_SECS
        hook("connections")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "http port refused clients by limit: connections 1",
        "http port refused clients in the last 10 s by limit: connections 1000, header_timeout 1",
    ]
    sample = registry.get_sample_value(
        "modelport_transport_refused_total", {"port": "http", "limit": "connections"}
    )
    assert sample == 1001
