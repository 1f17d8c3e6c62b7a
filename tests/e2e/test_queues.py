"""The queue frontend end to end, on each real broker: a real `modelport serve --queue` process,
requests sent and replies read with the project's queue client, answers compared with REST."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from modelport.examples import onnx_models
from modelport.frontends.queue.client import DeadLetter, OutgoingRequest, client_for
from modelport.frontends.queue.contract import Reply
from modelport.frontends.queue.endpoint import parse_endpoint
from tests.support import MODELPORT, Server, add_model, spawn_server, wait_ready, wait_until

FLAKY_MODEL = '''
from pathlib import Path

import numpy as np


class Model:
    """Fails (a 500: transient) while the file `failing` exists beside this one."""

    def predict(self, inputs):
        if (Path(__file__).parent / "failing").exists():
            raise RuntimeError("the flaky model is failing on purpose")
        return {"y": np.asarray(inputs["x"], dtype=np.float32) * 2}
'''
HELD_MODEL = '''
import time
from pathlib import Path

import numpy as np


class Model:
    """Holds every run while the file `hold` exists beside this one."""

    def predict(self, inputs):
        while (Path(__file__).parent / "hold").exists():
            time.sleep(0.01)
        return {"y": np.asarray(inputs["x"], dtype=np.float32) * 2}
'''
FLAKY_CONFIG = """
max_batch_size: 8
inputs: [{name: x, datatype: FP32, shape: [-1, 2]}]
outputs: [{name: y, datatype: FP32, shape: [-1, 2]}]
runtime: {executor: thread}
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("queue-repo")
    add_model(root, "mlp", onnx_models.mlp((64, 256, 256, 10), seed=1))
    flaky = root / "flaky" / "1"
    flaky.mkdir(parents=True)
    (flaky / "model.py").write_text(FLAKY_MODEL)
    (root / "flaky" / "config.yaml").write_text(FLAKY_CONFIG)
    held = root / "held" / "1"
    held.mkdir(parents=True)
    (held / "model.py").write_text(HELD_MODEL)
    (root / "held" / "config.yaml").write_text(FLAKY_CONFIG)
    return root


@pytest.fixture(params=["redis", "rabbitmq", "nats"])
def broker(request: pytest.FixtureRequest) -> Any:
    fixture = {"redis": "redis_broker", "rabbitmq": "rabbit_broker", "nats": "nats_broker"}
    return request.getfixturevalue(fixture[request.param])


@dataclass
class Queue:
    """Names of one test's own queue on the shared broker."""

    url: str

    @classmethod
    def fresh(cls, broker: Any, **extra: str) -> Queue:
        tag = uuid.uuid4().hex[:8]
        names = {
            "requests": f"t{tag}.in",
            "replies": f"t{tag}.out",
            "dead": f"t{tag}.dead",
            "stream": f"T{tag}",
            "retry_delay": "0.02",
            "visibility_timeout": "2",
            **extra,
        }
        query = "&".join(f"{key}={value}" for key, value in names.items())
        separator = "&" if "?" in broker.url else "?"
        return cls(f"{broker.url}{separator}{query}")


def start_server(repo: Path, log: Path, queue: Queue, *extra: str) -> Server:
    server = spawn_server(repo, log, "--queue", queue.url, *extra, append=True)
    wait_ready(server)
    wait_until(lambda: queue_connected(server), "the queue consumer connected")
    return server


def queue_connected(server: Server) -> bool:
    rows = httpx.post(f"{server.base}/v2/repository/index", timeout=10).json()
    return any(row["name"].startswith("queue ") and row["state"] == "READY" for row in rows)


def stop(server: Server, sig: int = signal.SIGTERM) -> int:
    if server.process.poll() is None:
        server.process.send_signal(sig)
    return server.process.wait(timeout=60)


@contextlib.contextmanager
def serving(repo: Path, log: Path, queue: Queue, *extra: str) -> Iterator[Server]:
    server = start_server(repo, log, queue, *extra)
    try:
        yield server
    finally:
        stop(server)


def mlp_body(rows: int, seed: int, request_id: str | None = None) -> bytes:
    data = np.random.default_rng(seed).random((rows, 64), dtype=np.float32)
    document: dict[str, Any] = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 64], "data": data}]
    }
    if request_id is not None:
        document["id"] = request_id
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def flaky_body() -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}
    )


class Exchange:
    """The queue client, run on its own event loop for a synchronous test."""

    def __init__(self, queue: Queue) -> None:
        self.endpoint = parse_endpoint(queue.url)
        self._loop = asyncio.new_event_loop()
        self._client = client_for(self.endpoint)
        self._run(self._client.connect())

    def _run(self, coroutine: Any) -> Any:
        return self._loop.run_until_complete(coroutine)

    def send(self, body: bytes, request_id: str, model: str | None = "mlp") -> None:
        self._run(self._client.send(OutgoingRequest(body, request_id, model)))

    def send_many(self, requests: list[OutgoingRequest]) -> None:
        self._run(self._client.send_many(requests))

    def replies(self, count: int, what: str, timeout: float = 120.0) -> list[Reply]:
        """Read replies until `count` distinct request ids have one (duplicates are kept)."""
        got: list[Reply] = []

        def enough() -> bool:
            got.extend(self._run(self._client.replies(self.endpoint.replies, 1000, 0.2)))
            return len({reply.request_id for reply in got}) >= count

        wait_until(enough, what, timeout)
        return got

    def replies_for(self, ids: set[str], what: str, timeout: float = 120.0) -> list[Reply]:
        """Read replies until every one of `ids` has one (others and duplicates are kept)."""
        got: list[Reply] = []

        def enough() -> bool:
            got.extend(self._run(self._client.replies(self.endpoint.replies, 1000, 0.2)))
            return ids <= {reply.request_id for reply in got}

        wait_until(enough, what, timeout)
        return got

    def dead_letters(self) -> list[DeadLetter]:
        return list(self._run(self._client.dead_letters()))

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self._client.close())
            self._loop.close()


@pytest.fixture
def queue(broker: Any) -> Queue:
    return Queue.fresh(broker)


@pytest.fixture
def exchange(queue: Queue) -> Iterator[Exchange]:
    client = Exchange(queue)
    yield client
    client.close()


def metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_replies_equal_the_rest_answers(
    repo: Path, tmp_path: Path, queue: Queue, exchange: Exchange
) -> None:
    with serving(repo, tmp_path / "server.log", queue) as server:
        bodies = {f"r{n}": mlp_body(1 + n % 3, n) for n in range(12)}
        for request_id, body in bodies.items():
            exchange.send(body, request_id)
        replies = {reply.request_id: reply for reply in exchange.replies(12, "12 replies")}
        assert set(replies) == set(bodies)
        for request_id, body in bodies.items():
            rest = httpx.post(f"{server.base}/v2/models/mlp/infer", content=body, timeout=30)
            reply = replies[request_id]
            assert reply.status == 200 and (reply.model, reply.version) == ("mlp", "1")
            answer = orjson.loads(reply.body)
            assert answer["id"] == request_id
            expected = rest.json()
            assert answer["outputs"] == expected["outputs"]
        assert metric(server, "modelport_inference_request_success_total") >= 24


def test_bad_input_gets_the_400_reply_and_is_not_retried(
    repo: Path, tmp_path: Path, queue: Queue, exchange: Exchange
) -> None:
    with serving(repo, tmp_path / "server.log", queue) as server:
        exchange.send(b'{"inputs": [{"name": "input", "datatype": "FP32"}]}', "bad-shape")
        exchange.send(mlp_body(1, 0), "no-such-model", model="nope")
        exchange.send(mlp_body(1, 0), "no-model", model=None)
        replies = {r.request_id: r for r in exchange.replies(3, "3 error replies")}
        assert replies["bad-shape"].status == 400
        assert "shape must be a list" in orjson.loads(replies["bad-shape"].body)["error"]
        assert replies["no-such-model"].status == 404
        assert "unknown model 'nope'" in orjson.loads(replies["no-such-model"].body)["error"]
        assert replies["no-model"].status == 400
        assert "names no model" in orjson.loads(replies["no-model"].body)["error"]
        assert metric(server, "modelport_broker_retries_total") == 0
        assert exchange.dead_letters() == []
        exchange.send(mlp_body(1, 0), "after")  # still serving
        assert exchange.replies(1, "a good reply after the bad ones")[0].status == 200


def test_a_transient_failure_is_retried_then_dead_lettered(
    repo: Path, tmp_path: Path, queue: Queue, exchange: Exchange
) -> None:
    flag = repo / "flaky" / "1" / "failing"
    flag.touch()
    try:
        with serving(repo, tmp_path / "server.log", queue) as server:
            exchange.send(flaky_body(), "doomed", model="flaky")
            [reply] = exchange.replies(1, "the error reply after the last attempt")
            assert reply.status == 500
            assert "the flaky model is failing on purpose" in orjson.loads(reply.body)["error"]
            wait_until(lambda: bool(exchange.dead_letters()), "the dead letter (after the reply)")
            [dead] = exchange.dead_letters()
            assert dead.request_id == "doomed" and dead.attempts == 5
            assert "failing on purpose" in dead.error
            assert metric(server, "modelport_broker_retries_total") == 4

            exchange.send(flaky_body(), "recovers", model="flaky")
            wait_until(
                lambda: metric(server, "modelport_broker_retries_total") >= 5,
                "a retry of the second request",
            )
            flag.unlink()
            [reply] = exchange.replies(1, "the second request's reply")
            assert (reply.request_id, reply.status) == ("recovers", 200)
            assert len(exchange.dead_letters()) == 1
    finally:
        flag.unlink(missing_ok=True)


def test_nothing_is_lost_when_the_server_is_killed(
    repo: Path, tmp_path: Path, queue: Queue, exchange: Exchange
) -> None:
    total = 2000
    ids = [f"k{n}" for n in range(total)]
    exchange.send_many([OutgoingRequest(mlp_body(1, n), ids[n], "mlp") for n in range(total)])
    log = tmp_path / "server.log"
    first = start_server(repo, log, queue)
    early = exchange.replies(300, "300 replies before the kill")
    stop(first, signal.SIGKILL)
    with serving(repo, log, queue):
        rest = exchange.replies(total - len({r.request_id for r in early}), "the other replies")
    replies = early + rest
    counts = Counter(reply.request_id for reply in replies)
    assert set(counts) == set(ids)  # every request answered
    assert all(reply.status == 200 for reply in replies)
    duplicated = [request_id for request_id, n in counts.items() if n > 1]
    # only requests in flight at the kill can be answered twice: at most max_in_flight of them
    assert len(duplicated) <= 64, duplicated


def test_two_servers_in_one_group_share_the_requests(
    repo: Path, tmp_path: Path, queue: Queue, exchange: Exchange
) -> None:
    with (
        serving(repo, tmp_path / "a.log", queue) as a,
        serving(repo, tmp_path / "b.log", queue) as b,
    ):
        exchange.send_many([OutgoingRequest(mlp_body(1, n), f"s{n}", "mlp") for n in range(400)])
        replies = exchange.replies(400, "400 replies")
        assert len(replies) == 400 and len({r.request_id for r in replies}) == 400
        served = [metric(s, "modelport_broker_messages_received_total") for s in (a, b)]
        assert sum(served) == 400
        assert min(served) > 0, served  # each server took part


def test_a_broker_restart_loses_nothing(
    broker: Any, repo: Path, tmp_path: Path, queue: Queue, exchange: Exchange
) -> None:
    with serving(repo, tmp_path / "server.log", queue) as server:
        exchange.send_many([OutgoingRequest(mlp_body(1, n), f"b{n}", "mlp") for n in range(300)])
        early = exchange.replies(50, "replies before the restart")
        broker.restart()
        wait_until(lambda: queue_connected(server), "the consumer reconnected", timeout=90)
        exchange.close()
        again = Exchange(queue)
        try:
            again.send_many(
                [OutgoingRequest(mlp_body(1, n), f"b{n}", "mlp") for n in range(300, 400)]
            )
            # the replies not read before the restart persisted across it
            unread = {f"b{n}" for n in range(400)} - {r.request_id for r in early}
            rest = again.replies_for(unread, "every reply across the restart", timeout=180)
        finally:
            again.close()
        replies = early + rest
        assert {r.request_id for r in replies} == {f"b{n}" for n in range(400)}
        assert server.alive()
        health = httpx.get(f"{server.base}/v2/health/ready", timeout=10)
        assert health.status_code == 200  # REST kept serving throughout


def test_sigterm_answers_what_is_in_flight_before_exiting(
    repo: Path, tmp_path: Path, queue: Queue, exchange: Exchange
) -> None:
    hold = repo / "held" / "1" / "hold"
    hold.touch()
    try:
        server = start_server(repo, tmp_path / "server.log", queue, "--log-level", "debug")
        ids = [f"d{n}" for n in range(200)]
        exchange.send_many([OutgoingRequest(flaky_body(), i, "held") for i in ids])
        # the server takes max_in_flight (64) requests and no more while they are held
        wait_until(
            lambda: metric(server, "modelport_broker_messages_received_total") == 64,
            "64 requests taken and held",
        )
        server.process.send_signal(signal.SIGTERM)
        hold.unlink()  # the held requests finish only now, after the stop began
        assert stop(server) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        assert "Traceback" not in server.log_text()
        first = exchange.replies(64, "a reply for each request the stopping server held")
        assert len(first) == 64 and all(reply.status == 200 for reply in first)
        answered = {reply.request_id for reply in first}
        # the rest stayed on the broker, unanswered: a new server answers them, none twice
        with serving(repo, tmp_path / "again.log", queue):
            rest = exchange.replies_for(set(ids) - answered, "the rest after a restart")
        assert sorted(r.request_id for r in first + rest) == sorted(ids)
    finally:
        hold.unlink(missing_ok=True)


def test_requests_in_flight_at_a_kill_are_answered_after_the_restart(
    repo: Path, tmp_path: Path, queue: Queue, exchange: Exchange
) -> None:
    hold = repo / "held" / "1" / "hold"
    hold.touch()
    try:
        server = start_server(repo, tmp_path / "server.log", queue)
        ids = {f"h{n}" for n in range(100)}
        exchange.send_many([OutgoingRequest(flaky_body(), i, "held") for i in sorted(ids)])
        wait_until(
            lambda: metric(server, "modelport_broker_messages_received_total") == 64,
            "64 requests taken and held",
        )
        stop(server, signal.SIGKILL)  # 64 taken, none answered, none acknowledged
        hold.unlink()
        with serving(repo, tmp_path / "again.log", queue) as again:
            replies = exchange.replies_for(ids, "every request, the 64 killed ones too")
            # the killed server's requests were handed out again (their attempts counted)
            assert metric(again, "modelport_broker_messages_received_total") >= 100
        assert {r.request_id for r in replies} == ids
        assert all(reply.status == 200 for reply in replies)
    finally:
        hold.unlink(missing_ok=True)


def test_redis_a_reply_to_that_is_no_stream_sends_the_request_to_the_dead_letters(
    redis_broker: Any, repo: Path, tmp_path: Path
) -> None:
    import redis

    queue = Queue.fresh(redis_broker)
    exchange = Exchange(queue)
    client = redis.Redis.from_url(redis_broker.url)
    try:
        client.set("not-a-stream", "x")
        with serving(repo, tmp_path / "server.log", queue):
            # sent together, read together, and settled in one script call: the refused reply
            # must not take the others with it
            good = [OutgoingRequest(mlp_body(1, n), f"good-{n}", "mlp") for n in range(3)]
            wrong = OutgoingRequest(mlp_body(1, 0), "wrong-type", "mlp", reply_to="not-a-stream")
            exchange.send_many([good[0], wrong, *good[1:]])
            replies = exchange.replies(3, "the other replies")
            assert sorted(r.request_id for r in replies) == ["good-0", "good-1", "good-2"]
            assert all(reply.status == 200 for reply in replies)
            wait_until(lambda: bool(exchange.dead_letters()), "the dead letter")
        [dead] = exchange.dead_letters()
        assert dead.request_id == "wrong-type" and "refused" in dead.error
        assert client.get("not-a-stream") == b"x"
        # settled once: nothing is left pending in the group for another attempt
        pending = client.xpending(exchange.endpoint.requests, exchange.endpoint.group)
        assert pending["pending"] == 0
    finally:
        client.delete("not-a-stream")
        client.close()
        exchange.close()


def test_the_queue_send_command_prints_and_saves_replies(
    redis_broker: Any, repo: Path, tmp_path: Path
) -> None:
    queue = Queue.fresh(redis_broker)
    inputs = tmp_path / "x.npz"
    np.savez(inputs, input=np.random.default_rng(0).random((2, 64), dtype=np.float32))
    command = [str(MODELPORT), "queue", "send", queue.url, "--model", "mlp", "--input", str(inputs)]
    with serving(repo, tmp_path / "server.log", queue) as server:
        sent = subprocess.run(
            [*command, "--count", "3", "--wait"], capture_output=True, text=True, timeout=120
        )
        assert sent.returncode == 0, sent.stderr
        lines = sent.stdout.splitlines()
        assert len(lines) == 3 and all(" 200 " in line for line in lines)
        saved = tmp_path / "y.npz"
        sent = subprocess.run(
            [*command, "--wait", "--output", str(saved)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sent.returncode == 0, sent.stderr
        with np.load(saved) as outputs:
            rest = httpx.post(
                f"{server.base}/v2/models/mlp/infer",
                content=orjson.dumps(
                    {
                        "inputs": [
                            {
                                "name": "input",
                                "datatype": "FP32",
                                "shape": [2, 64],
                                "data": np.load(inputs)["input"],
                            }
                        ]
                    },
                    option=orjson.OPT_SERIALIZE_NUMPY,
                ),
                timeout=30,
            ).json()
            expected = np.asarray(rest["outputs"][0]["data"], dtype=np.float32).reshape(2, -1)
            np.testing.assert_allclose(outputs[rest["outputs"][0]["name"]], expected, rtol=1e-6)
    unknown = subprocess.run(
        [str(MODELPORT), "queue", "send", "kafka://h", "--model", "m", "--input", str(inputs)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2 and "unknown scheme 'kafka'" in unknown.stderr
