"""Model lifecycle against a running server: versions published, changed and removed on disk
while a load generator runs (poll mode), and the model control API (explicit mode)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelport.examples import onnx_models
from tests.support import Server, add_model, run_server

POLL = 0.5
ROWS = np.arange(8, dtype=np.float32).reshape(2, 4)


def publish(repo: Path, name: str, version: int, value: float) -> None:
    """Write a version next to the model, then rename it into place (what `deploy` does)."""
    staging = repo / name / f".staging-{version}"
    staging.mkdir(parents=True)
    (staging / "model.onnx").write_bytes(onnx_models.offset(value).SerializeToString())
    staging.rename(repo / name / str(version))


def body(values: np.ndarray) -> dict[str, object]:
    return {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": list(values.shape),
                "data": values.ravel().tolist(),
            }
        ]
    }


@dataclass
class LoadLog:
    """What the load generator saw: (time, version, offset the output showed) per response."""

    answers: list[tuple[float, str, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def versions_since(self, moment: float) -> set[str]:
        return {version for at, version, _ in self.answers if at >= moment}


async def generate_load(base: str, log: LoadLog, stop: asyncio.Event, workers: int = 4) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:

        async def worker() -> None:
            while not stop.is_set():
                try:
                    reply = await client.post("/v2/models/live/infer", json=body(ROWS))
                except httpx.HTTPError as exc:
                    log.failures.append(repr(exc))
                    continue
                if reply.status_code != 200:
                    log.failures.append(f"{reply.status_code} {reply.text}")
                    continue
                answer = reply.json()
                output = np.array(answer["outputs"][0]["data"], dtype=np.float32)
                shift = set(np.round(output - ROWS.ravel(), 3).tolist())
                if len(shift) != 1:
                    log.failures.append(f"mixed output {output}")
                    continue
                log.answers.append((time.monotonic(), answer["model_version"], shift.pop()))

        await asyncio.gather(*(worker() for _ in range(workers)))


def index(server: Server) -> list[dict[str, object]]:
    return httpx.post(f"{server.base}/v2/repository/index", json={}).json()


async def wait_for(predicate: object, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_versions_change_under_load_without_a_failed_request(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "live", onnx_models.offset(1.0), config="version_policy: {latest: 1}\n")
    args = ("--model-control-mode", "poll", "--repository-poll-secs", str(POLL))
    with run_server(repo, tmp_path / "server.log", *args) as server:
        log = LoadLog()

        async def scenario() -> dict[str, float]:
            stop = asyncio.Event()
            load = asyncio.create_task(generate_load(server.base, log, stop))
            took: dict[str, float] = {}
            await wait_for(lambda: len(log.answers) > 20, 10, "first answers")

            start = time.monotonic()
            publish(repo, "live", 2, 2.0)
            took["new version"] = await wait_for(
                lambda: log.versions_since(time.monotonic() - 0.2) == {"2"}, 15, "version 2 only"
            )

            # a changed config reloads the serving version; requests keep flowing
            (repo / "live" / "config.yaml").write_text(
                "version_policy: {latest: 1}\ndynamic_batching: {max_queue_delay: 1ms}\n"
            )
            await wait_for(
                lambda: (
                    "dynamic_batching" in httpx.get(f"{server.base}/v2/models/live/config").text
                ),
                15,
                "the config change",
            )

            # a broken new version is reported FAILED while version 2 keeps serving
            (repo / "live" / "3").mkdir()
            (repo / "live" / "3" / "model.onnx").write_bytes(b"not an onnx model")
            await wait_for(
                lambda: any(
                    r.get("version") == "3" and r["state"] == "FAILED" for r in index(server)
                ),
                15,
                "version 3 FAILED",
            )
            broken_seen = time.monotonic()
            await asyncio.sleep(3 * POLL)
            assert log.versions_since(broken_seen) == {"2"}

            # removing versions 3 and 2 brings version 1 back; 2 drains and unloads
            for version in ("3", "2"):
                for file in (repo / "live" / version).iterdir():
                    file.unlink()
                (repo / "live" / version).rmdir()
            await wait_for(
                lambda: log.versions_since(time.monotonic() - 0.2) == {"1"}, 15, "back on version 1"
            )
            await asyncio.sleep(2 * POLL)
            stop.set()
            await load
            took["since start"] = time.monotonic() - start
            return took

        took = asyncio.run(scenario())
        assert log.failures == [], log.failures[:5]
        assert len(log.answers) > 100
        # every answer came from the version it names, and only from versions that existed
        assert {(version, shift) for _, version, shift in log.answers} <= {("1", 1.0), ("2", 2.0)}
        assert took["new version"] < POLL + 10
        rows = {r.get("version"): r["state"] for r in index(server)}
        assert rows == {"1": "READY"}
        text = server.log_text()
        assert "model live version 2 unloaded" in text
        assert "Traceback" not in text


def test_a_half_written_version_is_not_loaded_until_it_is_complete(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "live", onnx_models.offset(1.0))
    args = ("--model-control-mode", "poll", "--repository-poll-secs", str(POLL))
    with run_server(repo, tmp_path / "server.log", *args) as server:
        target = repo / "live" / "2"
        target.mkdir()
        data = onnx_models.offset(2.0).SerializeToString()
        chunk = len(data) // 25 + 1
        with (target / "model.onnx").open("wb") as sink:
            # 25 writes spread over 3 poll intervals, each closer to the next than the
            # poller's settle time (POLL / 4)
            for start in range(0, len(data), chunk):
                sink.write(data[start : start + chunk])
                sink.flush()
                os.fsync(sink.fileno())
                time.sleep(0.12 * POLL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            rows = {r.get("version"): r["state"] for r in index(server)}
            if rows.get("2") == "READY":
                break
            time.sleep(0.1)
        assert rows == {"2": "READY"}, rows  # the default policy serves the newest only
        reply = httpx.post(f"{server.base}/v2/models/live/infer", json=body(ROWS)).json()
        assert reply["model_version"] == "2"
        assert np.allclose(reply["outputs"][0]["data"], ROWS.ravel() + 2)
        assert "still changing" in server.log_text()
        assert "version 2 failed to load" not in server.log_text()


@pytest.fixture(scope="module")
def explicit_server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    repo = tmp_path_factory.mktemp("explicit")
    add_model(repo, "one", onnx_models.offset(1.0))
    add_model(repo, "two", onnx_models.offset(2.0))
    add_model(repo, "broken", b"garbage")
    args = ("--model-control-mode", "explicit", "--load-model", "one")
    with run_server(repo, tmp_path_factory.mktemp("logs") / "server.log", *args) as server:
        yield server


def test_explicit_mode_loads_only_what_is_asked(explicit_server: Server) -> None:
    rows = {r["name"]: (r.get("version"), r["state"], r["reason"]) for r in index(explicit_server)}
    assert rows == {
        "broken": (None, "UNAVAILABLE", "not loaded"),
        "one": ("1", "READY", ""),
        "two": (None, "UNAVAILABLE", "not loaded"),
    }


def test_load_and_unload_over_http(explicit_server: Server) -> None:
    client = httpclient.InferenceServerClient(explicit_server.url)
    assert not client.is_model_ready("two")
    client.load_model("two")
    assert client.is_model_ready("two")
    x = httpclient.InferInput("x", [2, 4], "FP32")
    x.set_data_from_numpy(ROWS)
    assert np.allclose(client.infer("two", [x]).as_numpy("y"), ROWS + 2)
    client.unload_model("two")
    assert not client.is_model_ready("two")
    with pytest.raises(InferenceServerException, match="no ready version"):
        client.infer("two", [x])
    rows = {r["name"]: r for r in client.get_model_repository_index()}
    assert rows["two"]["state"] == "UNAVAILABLE" and rows["two"]["reason"] == "unloaded"


def test_load_with_a_config_override_over_grpc(explicit_server: Server) -> None:
    client = grpcclient.InferenceServerClient(explicit_server.grpc_url)
    config = '{"max_batch_size": 2, "labels": {"stable": 1}}'
    client.load_model("two", config=config)
    assert client.get_model_config("two").config.max_batch_size == 2
    x = grpcclient.InferInput("x", [2, 4], "FP32")
    x.set_data_from_numpy(ROWS)
    answer = client.infer("two", [x], model_version="stable")
    assert answer.get_response().model_version == "1"
    assert np.allclose(answer.as_numpy("y"), ROWS + 2)
    client.unload_model("two")
    assert not client.is_model_ready("two")


def test_load_errors_name_the_problem(explicit_server: Server) -> None:
    base = explicit_server.base
    reply = httpx.post(f"{base}/v2/repository/models/broken/load")
    assert reply.status_code == 400
    assert "failed to load" in reply.json()["error"] and "version 1" in reply.json()["error"]
    assert httpx.post(f"{base}/v2/repository/models/nothere/load").status_code == 404
    bad_config = {"parameters": {"config": '{"max_batch_size": "lots"}'}}
    reply = httpx.post(f"{base}/v2/repository/models/two/load", json=bad_config)
    assert reply.status_code == 400 and "max_batch_size" in reply.json()["error"]
    reply = httpx.post(f"{base}/v2/repository/models/two/load", json={"parameters": {"x": 1}})
    assert reply.status_code == 400 and "unknown load parameter 'x'" in reply.json()["error"]
    assert httpx.post(f"{base}/v2/repository/models/..%2Fetc/load").status_code == 404
    client = grpcclient.InferenceServerClient(explicit_server.grpc_url)
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("broken")
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert explicit_server.alive() and httpx.get(f"{base}/v2/health/live").status_code == 200


def test_model_control_is_refused_outside_explicit_mode(server: Server) -> None:
    reply = httpx.post(f"{server.base}/v2/repository/models/mlp/unload")
    assert reply.status_code == 400
    assert "--model-control-mode explicit" in reply.json()["error"]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("mlp")
    assert caught.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert client.is_model_ready("mlp")
