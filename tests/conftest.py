from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Server, run_server, standard_repository


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
