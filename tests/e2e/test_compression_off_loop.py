"""gzip work stays off the event loop: while clients send gzip bombs (each refused 413 after
inflating up to the request limit) or ask for a large answer gzip-compressed, a well-behaved
client's small requests keep being answered, and answered *during* that work: inflating or
compressing on the loop would hold every other request until it was done."""

from __future__ import annotations

import gzip
import http.client
import threading
import time
from collections.abc import Callable, Iterator

import onnx
import orjson
import pytest
from onnx import TensorProto, helper

from modelport.examples import onnx_models
from tests.support import Server, add_model, run_server

BOMB = gzip.compress(b"\0" * (128 << 20))
"""~130 KB that inflates to 128 MiB: past the default 64 MiB request limit, so 413."""
NOISE_VALUES = 4 << 20
"""The `noise` model answers 16 MiB of random FP32 (slow to compress: nothing repeats)."""
SMALL_REQUEST = orjson.dumps(
    {
        "inputs": [
            {"name": name, "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}
            for name in ("INPUT0", "INPUT1")
        ]
    }
)
Window = tuple[float, float]


def noise_model(values: int) -> onnx.ModelProto:
    """x [1] -> y [values] = x + uniform noise: a tiny request with a large, random answer."""
    graph = helper.make_graph(
        [
            helper.make_node("RandomUniform", [], ["noise"], shape=[values], seed=1.0),
            helper.make_node("Add", ["x", "noise"], ["y"]),
        ],
        "noise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [values])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx_models.OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("compression_off_loop")
    add_model(root / "repo", "add_sub", onnx_models.add_sub("FP32", 16))
    add_model(root / "repo", "noise", noise_model(NOISE_VALUES))
    # the default --max-request-size (64 MiB): each bomb is inflated that far before its 413
    with run_server(root / "repo", root / "server.log") as running:
        yield running


class WellBehaved(threading.Thread):
    """Sends small infer requests one after another on one connection until stopped; keeps the
    time each answer came back."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self._server = server
        self.answered: list[float] = []
        self.failures: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self._server.http_port, timeout=60)
        while not self.stop.is_set():
            connection.request("POST", "/v2/models/add_sub/infer", body=SMALL_REQUEST)
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                self.answered.append(time.monotonic())
            else:
                self.failures.append(response.status)
        connection.close()


def timed_request(
    server: Server, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, Window]:
    """(status, (when the request was sent, when the answer's head came back))."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=120)
    try:
        connection.request("POST", path, body=body, headers=headers)
        sent = time.monotonic()
        response = connection.getresponse()
        answered = time.monotonic()
        response.read()
        return response.status, (sent, answered)
    finally:
        connection.close()


def run_attack(
    server: Server, attackers: int, requests_each: int, attack: Callable[[], tuple[int, Window]]
) -> tuple[WellBehaved, list[int], list[Window]]:
    client = WellBehaved(server)
    client.start()
    statuses: list[int] = []
    windows: list[Window] = []

    def attacker() -> None:
        for _ in range(requests_each):
            status, window = attack()
            statuses.append(status)
            windows.append(window)

    threads = [threading.Thread(target=attacker, daemon=True) for _ in range(attackers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    client.stop.set()
    client.join(timeout=60)
    return client, statuses, windows


def answered_late_within(client: WellBehaved, windows: list[Window]) -> list[int]:
    """How many of the well-behaved client's answers came back in the second half of each
    window. The (de)compression is the bulk of a window, and comes last: done on the loop, it
    would leave that half without a single answer, however fast or slow the machine."""
    counts = []
    for start, end in windows:
        middle = (start + end) / 2
        counts.append(sum(1 for t in client.answered if middle < t < end))
    return counts


def test_gzip_bombs_do_not_hold_other_requests(server: Server) -> None:
    def bomb() -> tuple[int, Window]:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return timed_request(server, "/v2/models/add_sub/infer", BOMB, headers)

    client, statuses, windows = run_attack(server, attackers=2, requests_each=6, attack=bomb)
    assert statuses == [413] * 12
    assert client.failures == []
    late = answered_late_within(client, windows)
    print("well-behaved answers late in each bomb's window:", late)
    assert max(late) >= 5, late
    assert server.alive()


def test_a_large_gzip_answer_does_not_hold_other_requests(server: Server) -> None:
    body = orjson.dumps(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.5]}],
            "parameters": {"binary_data_output": True},
        }
    )

    def large_answer() -> tuple[int, Window]:
        headers = {"Accept-Encoding": "gzip", "Content-Type": "application/json"}
        return timed_request(server, "/v2/models/noise/infer", body, headers)

    client, statuses, windows = run_attack(
        server, attackers=1, requests_each=3, attack=large_answer
    )
    assert statuses == [200] * 3
    assert client.failures == []
    late = answered_late_within(client, windows)
    print("well-behaved answers late in each large answer's window:", late)
    assert max(late) >= 5, late
