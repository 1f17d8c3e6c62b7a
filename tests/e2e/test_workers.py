"""`modelport serve --workers 2`: two server processes behind a supervisor, sharing the ports."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton

from modelport.examples import onnx_models
from tests import frameworks as fw
from tests.support import MODELPORT, Server, add_model, run_server

pytestmark = pytest.mark.e2e

THREADED_TOKENIZER = """
    max_batch_size: 64
    runtime: {executor: thread}
    inputs:
      - {name: TEXT, datatype: BYTES, shape: [-1]}
    outputs:
      - {name: FEATURES, datatype: FP32, shape: [-1, 8]}
      - {name: PID, datatype: INT64, shape: [-1]}
"""


def repository(root: Path) -> Path:
    repo = root / "repo"
    (fw.version_dir(repo, "whoami", config=THREADED_TOKENIZER) / "model.py").write_text(
        fw.TOKENIZER
    )
    add_model(repo, "mlp", onnx_models.mlp((64, 32, 10), seed=4))
    return repo


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("workers")
    with run_server(repository(root), root / "server.log", "--workers", "2") as server:
        yield server


def worker_pid(server: Server) -> int:
    """The PID of the worker that answers, over a new connection each time."""
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    reply = httpx.post(f"{server.base}/v2/models/whoami/infer", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    outputs = {output["name"]: output["data"] for output in reply.json()["outputs"]}
    return int(outputs["PID"][0])


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def successes(server: Server, model: str) -> float:
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    pattern = rf'modelport_inference_request_success_total{{model="{model}",version="1"}} (\S+)'
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def test_connections_are_spread_over_two_worker_processes(workers: Server) -> None:
    pids = {worker_pid(workers) for _ in range(40)}
    assert len(pids) == 2
    assert pids <= children(workers.process.pid)
    assert workers.process.pid not in pids


def test_metrics_count_every_workers_requests(workers: Server) -> None:
    before = successes(workers, "whoami")
    answered_by = {worker_pid(workers) for _ in range(30)}
    assert len(answered_by) == 2  # both workers took some
    for _ in range(4):  # whichever worker answers the scrape, it reports the sum
        assert successes(workers, "whoami") == before + 30


def test_grpc_reaches_the_workers(workers: Server, tmp_path: Path) -> None:
    client = triton.InferenceServerClient(workers.grpc_url)
    batch = np.random.default_rng(2).standard_normal((5, 64)).astype(np.float32)
    tensor = triton.InferInput("input", [5, 64], "FP32")
    tensor.set_data_from_numpy(batch)
    result = client.infer("mlp", [tensor]).as_numpy("output")
    client.close()
    path = tmp_path / "mlp.onnx"
    path.write_bytes(onnx_models.mlp((64, 32, 10), seed=4).SerializeToString())
    expected = ort.InferenceSession(str(path)).run(None, {"input": batch})[0]
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_a_worker_that_dies_is_replaced(workers: Server) -> None:
    victim = worker_pid(workers)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    pids: set[int] = set()
    while time.monotonic() < deadline and len(pids - {victim}) < 2:
        with contextlib.suppress(httpx.TransportError, AssertionError):
            pids.add(worker_pid(workers))
        time.sleep(0.05)
    assert len(pids - {victim}) == 2, pids  # the survivor and the replacement both serve
    assert f"(pid {victim}) exited with -9; starting another" in workers.log_text()


def test_explicit_model_control_needs_one_process(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(MODELPORT), "serve", "--workers", "2", "--model-control-mode", "explicit"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--model-control-mode explicit needs --workers 1" in result.stderr


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_workers_end_with_their_supervisor(tmp_path: Path, how: signal.Signals) -> None:
    with run_server(repository(tmp_path), tmp_path / "server.log", "--workers", "2") as server:
        started = children(server.process.pid)
        served = {worker_pid(server) for _ in range(20)}
        assert served <= started
        server.process.send_signal(how)
        server.process.wait(30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(pid) for pid in started):
        time.sleep(0.2)
    assert not [pid for pid in started if _alive(pid)], "workers outlived their supervisor"
    if how == signal.SIGTERM:
        assert server.process.returncode == 0
        assert server.log_text().count("Application shutdown complete") == 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    return False
