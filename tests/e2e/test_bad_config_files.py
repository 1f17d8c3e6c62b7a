"""Model config files that cannot be read or are nested thousands of levels deep fail their own
model on a real server, with a reason naming the problem; the other models load and serve, and
/v2/health/ready follows the readiness rules (ready; with --strict-readiness, not ready)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelport.examples import onnx_models
from tests.support import Server, add_model, run_server, spawn_server, wait_until

pytestmark = pytest.mark.e2e

INFER = {
    "inputs": [
        {"name": name, "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}
        for name in ("INPUT0", "INPUT1")
    ]
}
DEPTH = 3000
BLOCK_DEPTH = 1000
"""Indented YAML grows with the square of its depth: 1,000 levels stay under the 1 MiB cap."""
BAD_MODELS = {
    "config_is_a_directory": "config.yaml is not a regular file",
    "config_is_a_fifo": "config.yaml is not a regular file",
    "deep_block_yaml": "config.yaml is nested deeper than 64 levels",
    "deep_flow_yaml": "config.yaml is not valid YAML or JSON",
    "deep_pbtxt": "the config nests too deeply to be read",
}


def bad_repository(repo: Path) -> Path:
    model = onnx_models.add_sub("FP32", 16)
    add_model(repo, "add_sub", model)
    for name in BAD_MODELS:
        add_model(repo, name, model)
    (repo / "config_is_a_directory" / "config.yaml").mkdir()
    os.mkfifo(repo / "config_is_a_fifo" / "config.yaml")  # reading it would block for ever
    block = "".join(f"{' ' * level}k:\n" for level in range(1, BLOCK_DEPTH)) + " " * BLOCK_DEPTH
    (repo / "deep_block_yaml" / "config.yaml").write_text("parameters:\n" + block + "1\n")
    flow = "[" * DEPTH + "]" * DEPTH
    (repo / "deep_flow_yaml" / "config.yaml").write_text(f"parameters: {flow}\n")
    pbtxt = 'name: "deep_pbtxt"\n' + "parameters {" * DEPTH + "}" * DEPTH + "\n"
    (repo / "deep_pbtxt" / "config.pbtxt").write_text(pbtxt)
    return repo


def index(server: Server) -> dict[str, dict[str, str]]:
    rows = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()
    return {row["name"]: row for row in rows}


def assert_each_bad_model_failed_for_its_reason(server: Server) -> None:
    rows = index(server)
    assert rows["add_sub"]["state"] == "READY"
    for name, reason in BAD_MODELS.items():
        assert rows[name]["state"] != "READY", rows[name]
        assert reason in rows[name]["reason"], rows[name]


def assert_good_model_serves(server: Server) -> None:
    reply = httpx.post(f"{server.base}/v2/models/add_sub/infer", json=INFER, timeout=10)
    assert reply.status_code == 200, reply.text


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bad_repository(tmp_path_factory.mktemp("bad-configs") / "repo")


def test_each_bad_config_fails_its_own_model_and_the_server_becomes_ready(
    repository: Path, tmp_path: Path
) -> None:
    with run_server(repository, tmp_path / "server.log") as server:  # ready: 200
        assert_each_bad_model_failed_for_its_reason(server)
        assert_good_model_serves(server)
        log = server.log_text()
        assert "Traceback" not in log
        assert "RecursionError" not in log


@pytest.fixture
def strict_server(repository: Path, tmp_path: Path) -> Iterator[Server]:
    server = spawn_server(repository, tmp_path / "server.log", "--strict-readiness")
    try:
        yield server
    finally:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def test_with_strict_readiness_the_server_reports_not_ready_and_still_serves(
    strict_server: Server,
) -> None:
    def loaded() -> bool:
        try:
            rows = index(strict_server)
        except httpx.TransportError:
            return False
        return all(row["state"] not in ("LOADING", "") for row in rows.values()) and bool(rows)

    wait_until(loaded, "the initial load", timeout=30)
    assert_each_bad_model_failed_for_its_reason(strict_server)
    ready = httpx.get(f"{strict_server.base}/v2/health/ready", timeout=10)
    assert ready.status_code == 400, ready.text
    assert httpx.get(f"{strict_server.base}/v2/health/live", timeout=10).status_code == 200
    assert_good_model_serves(strict_server)
