"""Model lifecycle against a running server: versions published, changed and removed on disk
while a load generator runs (poll mode), and the model control API (explicit mode)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
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
    """What the load generator saw: (version, offset the output showed) per response, in the
    order they came."""

    answers: list[tuple[str, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def latest(self, count: int = 20) -> set[str]:
        """The versions that gave the last `count` answers (none until there are that many)."""
        if len(self.answers) < count:
            return set()
        return {version for version, _ in self.answers[-count:]}

    def since(self, index: int) -> set[str]:
        return {version for version, _ in self.answers[index:]}


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
                log.answers.append((answer["model_version"], shift.pop()))

        await asyncio.gather(*(worker() for _ in range(workers)))


def index(server: Server) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = httpx.post(f"{server.base}/v2/repository/index", json={}).json()
    return rows


def ready(server: Server, name: str) -> set[str]:
    return {
        str(r.get("version")) for r in index(server) if r["name"] == name and r["state"] == "READY"
    }


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll until `predicate()` holds; the deadline only ends a test that never gets there."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def test_versions_change_under_load_without_a_failed_request(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "live", onnx_models.offset(1.0), config="version_policy: {latest: 1}\n")
    args = ("--model-control-mode", "poll", "--repository-poll-secs", str(POLL))
    with run_server(repo, tmp_path / "server.log", *args) as server:
        log = LoadLog()

        def marker_ready(name: str) -> bool:
            return ready(server, name) == {"1"}

        async def scenario() -> None:
            stop = asyncio.Event()
            load = asyncio.create_task(generate_load(server.base, log, stop))
            await wait_for(lambda: len(log.answers) > 20, 10, "first answers")

            publish(repo, "live", 2, 2.0)
            await wait_for(lambda: log.latest() == {"2"}, 15, "version 2 only")

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
            # three more rounds of the poller (each loads one new model) leave version 2 serving
            broken_seen = len(log.answers)
            for marker in ("marker1", "marker2", "marker3"):
                add_model(repo, marker, onnx_models.offset(0.0))
                await wait_for(partial(marker_ready, marker), 15, f"{marker} READY")
            await wait_for(lambda: len(log.answers) > broken_seen + 20, 10, "more answers")
            assert log.since(broken_seen) == {"2"}

            # removing versions 3 and 2 brings version 1 back; 2 drains and unloads
            for version in ("3", "2"):
                for file in (repo / "live" / version).iterdir():
                    file.unlink()
                (repo / "live" / version).rmdir()
            await wait_for(lambda: log.latest() == {"1"}, 15, "back on version 1")
            await wait_for(
                lambda: "model live version 2 unloaded" in server.log_text(), 15, "2 unloaded"
            )
            await wait_for(lambda: len(log.answers) > 100, 30, "100 answers in all")
            stop.set()
            await load

        asyncio.run(scenario())
        assert log.failures == [], log.failures[:5]
        # every answer came from the version it names, and only from versions that existed
        assert set(log.answers) <= {("1", 1.0), ("2", 2.0)}
        rows = {r.get("version"): r["state"] for r in index(server) if r["name"] == "live"}
        assert rows == {"1": "READY"}
        text = server.log_text()
        assert "model live version 2 unloaded" in text
        assert "Traceback" not in text


def test_a_half_written_version_is_not_loaded_until_it_is_complete(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "live", onnx_models.offset(1.0))
    args = ("--model-control-mode", "poll", "--repository-poll-secs", str(POLL))
    with run_server(repo, tmp_path / "server.log", *args) as server:
        data = onnx_models.offset(2.0).SerializeToString()
        half = len(data) // 2
        staging = tmp_path / "staging"
        staging.mkdir()
        (staging / "model.onnx").write_bytes(data[:half])
        staging.rename(repo / "live" / "2")  # version 2 appears half-written
        model = repo / "live" / "2" / "model.onnx"
        # A copy in progress: the file keeps changing (its time, as a write would set it) until
        # the poller has looked twice, its settle time apart, and seen the difference.
        stamp = model.stat().st_mtime_ns
        deadline = time.monotonic() + 30
        while "model live is still changing" not in server.log_text():
            assert time.monotonic() < deadline, server.log_text()
            stamp += 1000
            os.utime(model, ns=(stamp, stamp))
            time.sleep(0.005)  # far shorter than the settle time (POLL / 4)
        with model.open("ab") as sink:  # the copy completes
            sink.write(data[half:])
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
def explicit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
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
