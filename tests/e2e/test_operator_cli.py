"""deploy / promote / rollback / models through the real CLI against a real server."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

from modelport.examples import onnx_models
from tests.support import MODELPORT, Server, add_model, run_server

POLL = 0.4
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(MODELPORT), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def model_file(tmp: Path, value: float) -> Path:
    path = tmp / f"offset-{value}.onnx"
    path.write_bytes(onnx_models.offset(value).SerializeToString())
    return path


def answer(server: Server) -> tuple[str, float]:
    reply = httpx.post(f"{server.base}/v2/models/svc/infer", json=BODY)
    assert reply.status_code == 200, reply.text
    document = reply.json()
    return document["model_version"], document["outputs"][0]["data"][0]


def wait_until_served(
    server: Server, versions: set[str], traffic: dict[str, float] | None = None, timeout: float = 15
) -> None:
    """Wait until svc serves exactly `versions` (and, if given, splits traffic so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = httpx.post(f"{server.base}/v2/repository/index").json()
        ready = {r["version"]: r for r in rows if r["name"] == "svc" and r["state"] == "READY"}
        split = {version: row.get("traffic") for version, row in ready.items()}
        if set(ready) == versions and (traffic is None or split == traffic):
            return
        time.sleep(0.1)
    raise AssertionError(f"svc never served exactly {versions} ({traffic}): {rows}")


def test_deploy_canary_promote_and_rollback(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "svc", onnx_models.offset(1.0))
    where = ("--model-repository", str(repo))
    args = ("--model-control-mode", "poll", "--repository-poll-secs", str(POLL))
    with run_server(repo, tmp_path / "server.log", *args) as server:
        out = cli("deploy", str(model_file(tmp_path, 2.0)), "--name", "svc", *where).stdout
        assert "published svc version 2" in out
        assert (repo / "svc" / "2" / "model.onnx").is_file()
        wait_until_served(server, {"2"})
        assert answer(server) == ("2", 2.0)

        cli("promote", "svc", "2", "--label", "stable", *where)
        deployed = cli(
            "deploy",
            str(model_file(tmp_path, 3.0)),
            "--name",
            "svc",
            "--label",
            "canary",
            "--traffic",
            "20",
            *where,
        )
        assert "labelled canary" in deployed.stdout
        config = yaml.safe_load((repo / "svc" / "config.yaml").read_text())
        assert config["labels"] == {"stable": 2, "canary": 3}
        assert config["traffic"] == {2: 80.0, 3: 20.0}
        wait_until_served(server, {"2", "3"}, traffic={"2": 80, "3": 20})
        counts = Counter(answer(server)[0] for _ in range(400))
        assert set(counts) == {"2", "3"} and 40 <= counts["3"] <= 130, counts

        table = cli("models", "--url", server.base).stdout
        assert "canary" in table and "stable" in table
        rows = json.loads(cli("models", "--url", server.base, "--json").stdout)
        by_version = {r["version"]: r for r in rows}
        assert by_version["3"]["labels"] == ["canary"] and by_version["3"]["traffic"] == 20

        rolled = cli("rollback", "svc", *where).stdout
        assert "stable -> version 2" in rolled and "moved aside: 3" in rolled
        wait_until_served(server, {"2"})
        assert {answer(server)[0] for _ in range(50)} == {"2"}
        retired = list((repo / "svc").glob(".retired-3-*"))
        assert len(retired) == 1 and (retired[0] / "model.onnx").is_file()  # nothing deleted

        cli("rollback", "svc", "--to", "1", *where)
        wait_until_served(server, {"1"})
        assert answer(server) == ("1", 1.0)
        disk = json.loads(cli("models", *where, "--json").stdout)
        assert [(r["version"], r["state"]) for r in disk] == [("1", "SERVED")]
        assert "Traceback" not in server.log_text()


def test_deploy_tells_an_explicit_mode_server(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "svc", onnx_models.offset(1.0))
    args = ("--model-control-mode", "explicit", "--load-model", "*")
    with run_server(repo, tmp_path / "server.log", *args) as server:
        out = cli(
            "deploy",
            str(model_file(tmp_path, 5.0)),
            "--name",
            "svc",
            "--model-repository",
            str(repo),
            "--url",
            server.base,
        ).stdout
        assert "reloaded svc" in out
        assert answer(server) == ("2", 5.0)


def test_operator_errors_are_clear(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "svc", onnx_models.offset(1.0))
    where = ("--model-repository", str(repo))
    taken = cli(
        "deploy",
        str(model_file(tmp_path, 2.0)),
        "--name",
        "svc",
        "--version",
        "1",
        *where,
        check=False,
    )
    assert taken.returncode != 0 and "version 1 already exists" in taken.stderr
    alone = cli("rollback", "svc", *where, check=False)
    assert alone.returncode != 0 and "no earlier version" in alone.stderr
    missing = cli("promote", "svc", "7", *where, check=False)
    assert missing.returncode != 0 and "no version 7" in missing.stderr
    bad_name = cli("deploy", str(model_file(tmp_path, 2.0)), "--name", "../x", *where, check=False)
    assert bad_name.returncode != 0 and "not a valid model name" in bad_name.stderr
    assert not (tmp_path / "x").exists()
    assert sorted(p.name for p in (repo / "svc").iterdir()) == ["1"]  # no staging left behind
