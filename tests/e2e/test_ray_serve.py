"""modelport on a real local Ray Serve (`modelport ray serve`, which starts Ray with 2 CPUs),
against a plain `modelport serve` of the same repository.

Two Ray servers, each started once for the tests that use it and stopped with SIGTERM:
- Ray's HTTP proxy, two replicas of each model: tritonclient gets the same answers as from the
  plain server (outputs, error statuses and messages, metadata, TF Serving REST); both replicas
  take requests (each one's counters in the merged /metrics); a replica process killed while a
  client keeps sending is replaced by Ray;
- Ray's HAProxy ingress, API keys, and a slow model autoscaled from 1 to 2 replicas under load.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from modelport.examples import onnx_models
from tests.e2e.slo_support import python_version, sleeping_model, write_config
from tests.support import MODELPORT, add_model, free_port, run_server, wait_until

pytestmark = pytest.mark.slow

START_TIMEOUT = 180.0
REPLICA_CPUS = "default: {ray_actor_options: {num_cpus: 0.5}}\n"
ALL_SCOPES = ("--scope", "inference", "--scope", "management", "--scope", "metrics")
MLP_INPUT = np.random.default_rng(3).standard_normal((3, 64)).astype(np.float32)


@dataclass
class RayServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    ray_tmp: Path
    base: str = field(init=False)

    def __post_init__(self) -> None:
        self.base = f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def ray_server(
    repo: Path, work: Path, *args: str, headers: dict[str, str] | None = None
) -> Iterator[RayServer]:
    """`modelport ray serve` in its own session (Ray's processes with it), until SIGTERM."""
    port = free_port()
    log = work / "ray-serve.log"
    # Ray's socket paths must stay short: a fresh directory right under /tmp
    ray_tmp = Path(tempfile.mkdtemp(prefix="mpr-", dir="/tmp"))
    command = [
        str(MODELPORT),
        "ray",
        "serve",
        "--model-repository",
        str(repo),
        "--http-port",
        str(port),
        "--num-cpus",
        "2",
        "--metrics-interval",
        "0.5",
        *args,
    ]
    env = {
        **os.environ,
        "RAY_TMPDIR": str(ray_tmp),
        "NO_COLOR": "1",
        "HOME": str(work),
        # replicas behind HAProxy wait 30 s for load balancers when stopping; none here
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    }
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = RayServer(process, port, log, ray_tmp)
    try:
        _wait_ready(server, headers or {})
        yield server
    finally:
        _stop(server)


def _wait_ready(server: RayServer, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"modelport ray serve exited:\n{server.log_text()[-5000:]}")
        with contextlib.suppress(httpx.TransportError):
            answer = httpx.get(f"{server.base}/v2/health/ready", headers=headers, timeout=2)
            if answer.status_code == 200 and "serving" in server.log_text():
                return
        time.sleep(0.5)
    raise TimeoutError(f"not ready after {START_TIMEOUT}s:\n{server.log_text()[-5000:]}")


def _stop(server: RayServer) -> None:
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # whatever of Ray's that outlived the command (it shuts its local Ray down itself)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    subprocess.run(["rm", "-rf", str(server.ray_tmp)], check=False)


def replica_pids(app: str) -> set[int]:
    """PIDs of the running replicas of application `app` (Ray names each process after its
    actor: `ray::ServeReplica:APP:DEPLOYMENT`)."""
    wanted = f"ServeReplica:{app}:model".encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if wanted in (entry / "cmdline").read_bytes():
                pids.add(int(entry.name))
    return pids


def per_replica_successes(server: RayServer, app: str, model: str) -> dict[str, float]:
    """Each replica's successful requests for `model`, from the front's merged /metrics."""
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    pattern = re.compile(r"^modelport_inference_request_success_total\{(.*)\} (\S+)$", re.M)
    for labels, value in pattern.findall(text):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if fields.get("serve_app") == app and fields.get("model") == model:
            replica = fields["serve_replica"]
            counts[replica] = counts.get(replica, 0.0) + float(value)
    return counts


def mlp_inputs() -> list[triton.InferInput]:
    tensor = triton.InferInput("input", list(MLP_INPUT.shape), "FP32")
    tensor.set_data_from_numpy(MLP_INPUT)
    return [tensor]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray-repo")
    add_model(root, "mlp", onnx_models.mlp((64, 256, 256, 10), seed=1))
    add_model(root, "add_sub", onnx_models.add_sub("FP32", 16))
    return root


@pytest.fixture(scope="module")
def plain(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    with run_server(repo, tmp_path_factory.mktemp("plain") / "serve.log") as server:
        yield server


@pytest.fixture(scope="module")
def on_ray(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayServer]:
    work = tmp_path_factory.mktemp("ray-proxy")
    (work / "ray-options.yaml").write_text(REPLICA_CPUS)
    with ray_server(
        repo, work, "--replicas", "2", "--ray-options", str(work / "ray-options.yaml")
    ) as server:
        yield server


def _triton_answer(url: str) -> dict[str, object]:
    """What a tritonclient user sees: outputs, and the status and message of two errors."""
    client = triton.InferenceServerClient(url)
    result = client.infer("mlp", mlp_inputs())
    answers: dict[str, object] = {"mlp": result.as_numpy("output")}
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    add_inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = triton.InferInput(name, [1, 16], "FP32")
        tensor.set_data_from_numpy(x)
        add_inputs.append(tensor)
    answers["add_sub"] = client.infer("add_sub", add_inputs).as_numpy("OUTPUT0")
    wrong = triton.InferInput("input", [1, 63], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 63), dtype=np.float32))
    for case, model, inputs in (("bad", "mlp", [wrong]), ("unknown", "nope", mlp_inputs())):
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, inputs)
        answers[case] = (caught.value.status(), caught.value.message())
    answers["metadata"] = client.get_model_metadata("mlp")
    answers["server"] = client.get_server_metadata()
    answers["ready"] = client.is_model_ready("mlp")
    answers["config"] = client.get_model_config("add_sub")
    client.close()
    return answers


def _rest_answers(base: str) -> dict[str, tuple[int, object]]:
    """Routes a tritonclient does not reach: TF Serving REST, the index, health, bad JSON."""
    row = MLP_INPUT[:1].tolist()
    calls = {
        "tf_predict": ("POST", "/v1/models/mlp:predict", {"instances": row}),
        "tf_status": ("GET", "/v1/models/mlp", None),
        "tf_unknown": ("POST", "/v1/models/nope:predict", {"instances": row}),
        "index": ("POST", "/v2/repository/index", {}),
        "live": ("GET", "/v2/health/live", None),
        "ready": ("GET", "/v2/health/ready", None),
        "version_ready": ("GET", "/v2/models/mlp/versions/1/ready", None),
        "bad_json": ("POST", "/v2/models/mlp/infer", b"{not json"),
    }
    answers = {}
    for name, (method, path, body) in calls.items():
        if isinstance(body, bytes):
            answer = httpx.request(method, base + path, content=body, timeout=30)
        else:
            answer = httpx.request(method, base + path, json=body, timeout=30)
        answers[name] = (answer.status_code, answer.json())
    return answers


def test_same_answers_as_plain_modelport(plain: object, on_ray: RayServer) -> None:
    expected = _triton_answer(plain.url)  # type: ignore[attr-defined]
    got = _triton_answer(on_ray.url)
    np.testing.assert_array_equal(got.pop("mlp"), expected.pop("mlp"))
    np.testing.assert_array_equal(got.pop("add_sub"), expected.pop("add_sub"))
    assert got == expected
    assert expected["bad"][0] == "400" and expected["unknown"][0] == "404"  # type: ignore[index]
    assert _rest_answers(on_ray.base) == _rest_answers(plain.base)  # type: ignore[attr-defined]


def test_model_control_is_refused(plain: object, on_ray: RayServer) -> None:
    """As by a server in model control mode none (same status), saying why."""
    path = "/v2/repository/models/mlp/unload"
    expected = httpx.post(plain.base + path, timeout=10)  # type: ignore[attr-defined]
    answer = httpx.post(on_ray.base + path, timeout=10)
    assert answer.status_code == expected.status_code == 400
    assert "Ray Serve" in answer.json()["error"]
    assert httpx.get(f"{on_ray.base}/v2/models/mlp/ready", timeout=10).status_code == 200


def test_both_replicas_take_requests(on_ray: RayServer) -> None:
    client = triton.InferenceServerClient(on_ray.url, concurrency=8)
    pending = [client.async_infer("mlp", mlp_inputs()) for _ in range(64)]
    for request in pending:
        request.get_result()
    client.close()
    wait_until(
        lambda: len(per_replica_successes(on_ray, "mlp", "mlp")) == 2,
        "both mlp replicas' counters in /metrics",
    )
    counts = per_replica_successes(on_ray, "mlp", "mlp")
    assert all(count > 0 for count in counts.values()), counts
    assert len(replica_pids("mlp")) == 2


def test_killed_replica_is_replaced(on_ray: RayServer) -> None:
    before = replica_pids("mlp")
    assert len(before) == 2
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
    outcomes: list[int] = []
    stop = threading.Event()

    def keep_sending() -> None:
        with httpx.Client(base_url=on_ray.base, timeout=10) as client:
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    outcomes.append(client.post("/v2/models/mlp/infer", json=body).status_code)
                except httpx.TransportError:
                    outcomes.append(0)

    senders = [threading.Thread(target=keep_sending) for _ in range(2)]
    for sender in senders:
        sender.start()
    try:
        wait_until(lambda: len(outcomes) > 20, "requests before the kill")
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        killed_at = len(outcomes)
        wait_until(
            lambda: len(pids := replica_pids("mlp")) == 2 and victim not in pids,
            "a new mlp replica in place of the killed one",
            timeout=90,
        )
        replaced_at = len(outcomes)
        wait_until(lambda: len(outcomes) > replaced_at + 50, "requests after the replacement")
    finally:
        stop.set()
        for sender in senders:
            sender.join()
    failed = [status for status in outcomes if status != 200]
    print(
        f"\nreplica {victim} killed: {len(failed)} of {len(outcomes)} requests failed "
        f"({len(outcomes) - killed_at} sent after the kill; statuses {sorted(set(failed))})"
    )
    after = outcomes[replaced_at:]
    assert after[-30:] == [200] * 30  # the service recovered
    assert len(failed) <= 16  # at most the few in flight on the killed replica, and retries
    wait_until(lambda: len(per_replica_successes(on_ray, "mlp", "mlp")) == 2, "metrics of both")


@pytest.fixture(scope="module")
def autoscaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RayServer, str]]:
    """The HAProxy ingress, API keys, and a 50 ms model that autoscales from 1 to 2."""
    work = tmp_path_factory.mktemp("ray-haproxy")
    repo = work / "repo"
    python_version(repo, "slow", 1, sleeping_model(0.05))
    write_config(repo, "slow", {})
    add_model(repo, "mlp", onnx_models.mlp((64, 256, 256, 10), seed=1))
    keys = work / "keys.yaml"
    created = subprocess.run(
        [str(MODELPORT), "keys", "add", "tester", "--api-keys", str(keys), *ALL_SCOPES],
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip()
    (work / "ray-options.yaml").write_text(
        REPLICA_CPUS
        + "models:\n  slow:\n    autoscaling_config:\n"
        + "      {min_replicas: 1, max_replicas: 2, initial_replicas: 1,"
        + " target_ongoing_requests: 1, upscale_delay_s: 1, downscale_delay_s: 600,"
        + " look_back_period_s: 2}\n"
    )
    headers = {"Authorization": f"Bearer {key}"}
    with ray_server(
        repo,
        work,
        "--ingress",
        "haproxy",
        "--api-keys",
        str(keys),
        "--ray-options",
        str(work / "ray-options.yaml"),
        headers=headers,
    ) as server:
        yield server, key


def test_haproxy_ingress_with_api_keys(autoscaled: tuple[RayServer, str]) -> None:
    server, key = autoscaled
    client = triton.InferenceServerClient(server.url)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("mlp", mlp_inputs())
    assert refused.value.status() == "401"
    result = client.infer("mlp", mlp_inputs(), headers={"Authorization": f"Bearer {key}"})
    assert result.as_numpy("output").shape == (3, 10)
    client.close()
    assert httpx.get(f"{server.base}/metrics", timeout=10).status_code == 401
    assert httpx.get(f"{server.base}/v2/health/live", timeout=10).status_code == 200


def test_autoscaling_from_one_to_two(autoscaled: tuple[RayServer, str]) -> None:
    server, key = autoscaled
    assert len(replica_pids("slow")) == 1
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    headers = {"Authorization": f"Bearer {key}"}
    stop = threading.Event()
    statuses: list[int] = []

    def load() -> None:
        with httpx.Client(base_url=server.base, headers=headers, timeout=30) as client:
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                statuses.append(client.post("/v2/models/slow/infer", json=body).status_code)

    senders = [threading.Thread(target=load) for _ in range(6)]
    for sender in senders:
        sender.start()
    try:
        wait_until(lambda: len(replica_pids("slow")) == 2, "a second replica of slow", timeout=90)
    finally:
        stop.set()
        for sender in senders:
            sender.join()
    assert statuses and all(status == 200 for status in statuses), set(statuses)
