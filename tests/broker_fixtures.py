"""pytest fixtures for real brokers (tests/brokers.py), loaded for every test module as a
plugin by tests/conftest.py (so a session-scoped broker boots once, not once per module).

`redis_broker`, `rabbit_broker` and `nats_broker` are session-scoped: one broker each for the
whole run, started on first use and stopped at the end. A test that stops, kills or restarts one
must leave it running on the same URL (restart() does); streams, queues and subjects should have
names of the test's own. `fresh_redis_broker` and `fresh_nats_broker` are a new broker per test
(they start in well under a second); RabbitMQ has none, as it takes seconds to boot.

A broker whose binary is missing fails the test, naming the Debian package to install: these
tests are never skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import pytest

from tests.brokers import Broker, BrokerNotInstalledError, NatsBroker, RabbitBroker, RedisBroker

B = TypeVar("B", bound=Broker)


def started(kind: type[B], factory: pytest.TempPathFactory) -> Iterator[B]:
    broker = kind(factory.mktemp(kind.name))
    try:
        broker.start()
    except BrokerNotInstalledError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def redis_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisBroker]:
    yield from started(RedisBroker, tmp_path_factory)


@pytest.fixture(scope="session")
def rabbit_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitBroker]:
    yield from started(RabbitBroker, tmp_path_factory)


@pytest.fixture(scope="session")
def nats_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsBroker]:
    yield from started(NatsBroker, tmp_path_factory)


@pytest.fixture
def fresh_redis_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisBroker]:
    yield from started(RedisBroker, tmp_path_factory)


@pytest.fixture
def fresh_nats_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsBroker]:
    yield from started(NatsBroker, tmp_path_factory)
