from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.digits import Digits, digits, mlp, train
from tests.support import Server, run_server, standard_repository

# The real brokers, once per session for every module that uses them.
pytest_plugins = ("tests.broker_fixtures",)


@pytest.fixture(scope="session")
def standard_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return standard_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="session")
def server(standard_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real `modelport serve` process over the standard repository, shared by e2e tests."""
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with run_server(standard_repo, log) as running:
        yield running
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="session")
def digit_data() -> Digits:
    return digits()


@pytest.fixture(scope="session")
def digits_onnx(digit_data: Digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained digits MLP (64-256-256-10) converted to ONNX."""
    from modelport.optimize import convert

    path = tmp_path_factory.mktemp("digits") / "mlp.onnx"
    convert(train(mlp(), digit_data.train), digit_data.val.take(slice(0, 32)), path)
    return path
