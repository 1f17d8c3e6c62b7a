"""The HTTP/1.1 port against hostile clients on a real server: dripped headers are cut off
after --header-timeout (408), oversized headers (bytes or count) get 431 at once, a stalled body
408 after --stall-timeout, bodies past --max-pending-bytes 503, and connections past
--max-connections a 503 written before anything is read, while the gRPC port and well-behaved
HTTP clients keep being served. Attackers use raw sockets; the well-behaved client is httpx."""

from __future__ import annotations

import contextlib
import re
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as triton

from modelport.examples import onnx_models
from tests.support import Server, add_model, run_server, wait_until

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT = 1.0
STALL_TIMEOUT = 2.0
PENDING_BYTES = 300_000
ATTACK_PATIENCE = 8.0
"""Seconds an attacker waits for its answer: several times the timeouts under test, so a
server without the defence is told apart from a slow one."""
INFER = {
    "inputs": [
        {"name": name, "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}
        for name in ("INPUT0", "INPUT1")
    ]
}


SLOW_MODEL = f"""
import time

import numpy as np


class Model:
    def predict(self, inputs):
        time.sleep({HEADER_TIMEOUT * 1.5})  # answers after the next request's header deadline
        return {{"y": np.asarray(inputs["x"], dtype=np.float32)}}
"""
BIG_ANSWER = 1_500_000
"""Floats in the big model's answer: 6 MB of JSON, more than the sockets' buffers hold."""
BIG_MODEL = f"""
import numpy as np


class Model:
    def predict(self, inputs):
        return {{"y": np.zeros((1, {BIG_ANSWER}), dtype=np.float32)}}
"""
BIG_CONFIG = """
inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]
outputs: [{name: y, datatype: FP32, shape: [-1, -1]}]
runtime: {executor: thread}
"""
SLOW_CONFIG = """
inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]
outputs: [{name: y, datatype: FP32, shape: [-1, 4]}]
runtime: {executor: thread}
"""


def small_repository(repo: Path) -> Path:
    add_model(repo, "add_sub", onnx_models.add_sub("FP32", 16))
    return repo


def repository_with_python_models(repo: Path) -> Path:
    small_repository(repo)
    for name, code, config in (("slow", SLOW_MODEL, SLOW_CONFIG), ("big", BIG_MODEL, BIG_CONFIG)):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(code)
        (repo / name / "config.yaml").write_text(config)
    return repo


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("http1")
    with run_server(
        repository_with_python_models(root / "repo"),
        root / "server.log",
        "--header-timeout",
        str(HEADER_TIMEOUT),
        "--stall-timeout",
        str(STALL_TIMEOUT),
        "--max-pending-bytes",
        str(PENDING_BYTES),
    ) as running:
        yield running


Attacker = Callable[[Server], socket.socket]


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    """Opens raw sockets to a server's HTTP port, closed when the test ends."""
    opened: list[socket.socket] = []

    def connect(server: Server) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=ATTACK_PATIENCE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        opened.append(sock)
        return sock

    yield connect
    for sock in opened:
        sock.close()


def answer(sock: socket.socket) -> bytes:
    """Everything the server writes until it closes (b"" if it closes without a word);
    socket.timeout if it neither answers nor closes within ATTACK_PATIENCE."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def status_of(raw: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", raw)
    assert match, raw[:200]
    return int(match.group(1))


def header(raw: bytes, name: bytes) -> bytes | None:
    match = re.search(rb"\r\n" + name + rb": ([^\r]*)\r\n", raw.split(b"\r\n\r\n")[0] + b"\r\n")
    return match.group(1) if match else None


def served(server: Server) -> None:
    """A well-behaved client, on a fresh connection, is answered during the attack."""
    assert httpx.get(f"{server.base}/v2/health/ready", timeout=10).status_code == 200
    reply = httpx.post(f"{server.base}/v2/models/add_sub/infer", json=INFER, timeout=10)
    assert reply.status_code == 200, reply.text


def test_well_behaved_clients_are_not_cut_off(server: Server, attacker: Attacker) -> None:
    """The deadlines count from each response's end and per body chunk: a keep-alive client
    busy for longer than the header timeout, a slow answer, and a body sent in pieces over
    longer than both timeouts (each gap shorter than the stall timeout) are all served."""
    with httpx.Client(base_url=server.base, timeout=10) as client:
        started = time.monotonic()
        while time.monotonic() - started < HEADER_TIMEOUT * 1.5:
            assert client.get("/v2/health/ready").status_code == 200
        slow = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}
        assert client.post("/v2/models/slow/infer", json=slow).status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
    body = httpx.Request("POST", "http://x", json=INFER).read()
    sock = attacker(server)
    sock.sendall(
        b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    pieces = 4
    step = -(-len(body) // pieces)
    for start in range(0, len(body), step):
        time.sleep(STALL_TIMEOUT * 0.3)
        sock.sendall(body[start : start + step])
    assert status_of(answer(sock)) == 200


def test_dripped_headers_are_cut_off_at_the_header_deadline(
    server: Server, attacker: Attacker
) -> None:
    sock = attacker(server)
    sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    # One byte every 0.2 s: uvicorn's keep-alive timer alone never fires while bytes arrive.
    for drop in range(int(ATTACK_PATIENCE / 0.2)):
        readable, _, _ = select.select([sock], [], [], 0.2)
        if readable:
            break
        try:
            sock.sendall(b"x")
        except OSError:
            break
        if drop == 1:
            served(server)
    raw = answer(sock)
    assert time.monotonic() - started >= HEADER_TIMEOUT * 0.9  # the deadline, not sooner
    assert status_of(raw) == 408
    assert header(raw, b"connection") == b"close"
    assert b'"error"' in raw
    served(server)


def test_a_header_line_over_64_kib_gets_431(server: Server, attacker: Attacker) -> None:
    sock = attacker(server)
    sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nX-Big: " + b"a" * (64 << 10) + b"\r\n\r\n")
    raw = answer(sock)
    assert status_of(raw) == 431
    assert b"65536 bytes" in raw
    served(server)


def test_a_64_mib_header_line_is_refused_long_before_its_end(
    server: Server, attacker: Attacker
) -> None:
    sock = attacker(server)
    line = b"a" * (1 << 20)
    sent = 0
    with pytest.raises(OSError):  # the server closes after 64 KiB: a write then fails
        sock.sendall(b"GET / HTTP/1.1\r\nX-Big: ")
        while sent < 64 << 20:
            sock.sendall(line)
            sent += len(line)
        answer(sock)  # a server that took all 64 MiB still has not answered
    assert sent < 32 << 20, sent
    served(server)


def test_more_than_100_header_fields_get_431(server: Server, attacker: Attacker) -> None:
    fields = b"".join(b"X-Field-%d: 1\r\n" % index for index in range(101))
    sock = attacker(server)
    sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    raw = answer(sock)
    assert status_of(raw) == 431
    assert b"100 header fields" in raw
    served(server)


def test_a_stalled_body_gets_408_after_the_stall_timeout(
    server: Server, attacker: Attacker
) -> None:
    sock = attacker(server)
    sock.sendall(
        b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b" " * 999
    )
    served(server)
    raw = answer(sock)
    assert status_of(raw) == 408
    assert b"stalled" in raw
    served(server)


def test_bodies_past_the_pending_budget_get_503(server: Server, attacker: Attacker) -> None:
    share = PENDING_BYTES * 2 // 5  # two fit, the third does not
    attackers = []
    for _ in range(3):
        sock = attacker(server)
        sock.sendall(
            b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n" + b" " * share
        )
        attackers.append(sock)
        time.sleep(0.1)  # the server has charged this one before the next arrives
    refused = answer(attackers[2])
    assert status_of(refused) == 503
    assert header(refused, b"retry-after") == b"1"
    assert header(refused, b"connection") == b"close"
    assert b"--max-pending-bytes" in refused
    served(server)  # the two held bodies leave room for a small request


def ask_for_the_big_answer(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    small = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}
    body = httpx.Request("POST", "http://x", json=small).read()
    sock.sendall(
        b"POST /v2/models/big/infer HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )


def read_answer(sock: socket.socket, pause: float = 0.0) -> tuple[int, bytes]:
    """The declared Content-Length and the body bytes received before the end or a reset."""
    raw = b""
    with contextlib.suppress(ConnectionResetError):  # an aborted connection ends in a reset
        while chunk := sock.recv(512 << 10):
            raw += chunk
            time.sleep(pause)
    head, _, received = raw.partition(b"\r\n\r\n")
    assert status_of(head) == 200
    return int(header(raw, b"content-length") or 0), received


def test_an_answer_the_client_stops_reading_is_cut_off_after_the_stall_timeout(
    server: Server, attacker: Attacker
) -> None:
    sock = attacker(server)
    ask_for_the_big_answer(sock)
    time.sleep(STALL_TIMEOUT * 1.5)  # reads nothing: the server's write buffer fills and stays full
    served(server)
    declared, received = read_answer(sock)
    assert declared > len(received) > 0  # cut off part way, not delivered whole


def test_a_slow_but_steady_reader_gets_its_whole_answer(server: Server, attacker: Attacker) -> None:
    """It takes longer than the header timeout to read, but never stops for the stall timeout."""
    sock = attacker(server)
    ask_for_the_big_answer(sock)
    # At most 64 KiB a read: what the kernel's buffers do not hold waits in the server's
    # transport for longer than the header timeout, paused and resumed as the client reads.
    declared, received = read_answer(sock, pause=0.05)
    assert len(received) == declared


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("capped")
    with run_server(
        small_repository(root / "repo"), root / "server.log", "--max-connections", "8"
    ) as running:
        yield running


def test_connections_past_the_cap_get_503_and_the_grpc_port_still_serves(
    capped: Server, attacker: Attacker
) -> None:
    held = [attacker(capped) for _ in range(8)]
    time.sleep(0.2)  # every one of them is admitted before the next arrives
    refused = answer(attacker(capped))  # nothing sent: the answer comes on arrival
    assert status_of(refused) == 503
    assert header(refused, b"retry-after") == b"1"
    assert b"connection limit (8)" in refused
    client = triton.InferenceServerClient(capped.grpc_url)
    assert client.is_server_ready()
    assert client.is_model_ready("add_sub")
    held.pop().close()

    def admitted() -> bool:
        try:
            return httpx.get(f"{capped.base}/metrics", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(admitted, "a well-behaved request once an attacker left", timeout=10)
    metrics = httpx.get(f"{capped.base}/metrics", timeout=5).text
    match = re.search(
        r'^modelport_transport_refused_total\{limit="connections",port="http"\} (\S+)$',
        metrics,
        re.MULTILINE,
    )
    assert match and float(match.group(1)) >= 1, metrics[-2000:]
