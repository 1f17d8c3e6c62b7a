"""The HTTP/2 server's defences against hostile clients (issue 19), end to end: each attack comes
from raw sockets speaking hand-made HTTP/2 (tests/h2attacker.py) against a real `modelport serve`,
while a well-behaved tritonclient.grpc client keeps calling ServerLive and ModelInfer; its calls
must all succeed, during the attack and after it.

Every attacker connects from its own loopback address (the reset budget is per client address),
and the servers run with short timeouts so each attack ends within a few seconds.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2

from modelport.examples import onnx_models
from modelport.frontends.grpc.http2 import frames as f
from modelport.frontends.grpc.http2.frames import ErrorCode, Setting
from tests.h2attacker import (
    MODEL_INFER,
    SERVER_LIVE,
    RawClient,
    StreamSeen,
    grpc_message,
    ping_data_flood,
    rapid_reset,
    reconnect_flood,
    request_fields,
    settings_flood,
    unfinished_messages,
)
from tests.support import Server, add_model, run_server, wait_until

pytestmark = pytest.mark.e2e

WIDE_ROW = 1 << 20  # FP32 elements per row of the identity model: 4 MiB each way
TIMEOUT = 0.5  # --header-timeout and --stall-timeout of the timeouts server
IDLE = 1.0
PENDING = 10 << 20  # --max-pending-bytes of the budgets server
BUDGET_STALL = 1.5  # its --stall-timeout: long enough to send a few 4 MiB requests
CALM = ErrorCode.ENHANCE_YOUR_CALM
SOURCES = (f"127.0.0.{host}" for host in itertools.count(2))
"""Each attacker's own client address."""


REFUSED_ADDRESS = b"this client address has used up its budget; try again later"


def repository(path: Path) -> Path:
    add_model(path, "mlp", onnx_models.mlp((64, 256, 256, 10), seed=1))
    add_model(path, "wide", onnx_models.identity("FP32", ("N", WIDE_ROW)))
    return path


@contextlib.contextmanager
def serving(tmp: pytest.TempPathFactory, name: str, *flags: str) -> Iterator[Server]:
    repo = repository(tmp.mktemp(name))
    with run_server(repo, repo / "server.log", "--log-level", "info", *flags) as server:
        yield server
    assert "Traceback" not in server.log_text(), server.log_text()[-4000:]


@pytest.fixture(scope="module")
def timeouts_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Short preface, stall and idle timeouts; every other limit at its default."""
    flags = ("--header-timeout", str(TIMEOUT), "--stall-timeout", str(TIMEOUT))
    with serving(tmp_path_factory, "timeouts", *flags, "--idle-timeout", str(IDLE)) as server:
        yield server


@pytest.fixture(scope="module")
def budgets_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A small server-wide budget for requests still arriving and for answers waiting."""
    flags = ("--max-pending-bytes", str(PENDING), "--stall-timeout", str(BUDGET_STALL))
    with serving(tmp_path_factory, "budgets", *flags) as server:
        yield server


Connect = Callable[..., RawClient]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Opens attacking connections (each from its own address), closed after the test."""
    opened: list[RawClient] = []

    def open_one(port: int, **options: Any) -> RawClient:
        client = RawClient(port, options.pop("source", None) or next(SOURCES), **options)
        opened.append(client)
        return client

    yield open_one
    for client in opened:
        client.close()


# -- the well-behaved client -----------------------------------------------------------------------


def mlp_call(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), np.float32))
    result = client.infer("mlp", [tensor], client_timeout=30)
    output = result.as_numpy("output")
    assert output is not None and output.shape == (1, 10)


def wide_call(client: triton.InferenceServerClient) -> None:
    data = np.arange(WIDE_ROW, dtype=np.float32).reshape(1, WIDE_ROW)
    tensor = triton.InferInput("x", [1, WIDE_ROW], "FP32")
    tensor.set_data_from_numpy(data)
    np.testing.assert_array_equal(client.infer("wide", [tensor]).as_numpy("y"), data)


class Bystander:
    """ServerLive and a small ModelInfer, again and again on a thread, on its own channel."""

    def __init__(self, server: Server) -> None:
        self.client = triton.InferenceServerClient(server.grpc_url)
        self.calls = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                assert self.client.is_server_live(client_timeout=30)
                mlp_call(self.client)
                self.calls += 1
            except Exception as exc:
                self.failures.append(repr(exc)[:300])
                time.sleep(0.05)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self.client.close()

    def wait_calls(self, more: int) -> None:
        target = self.calls + more
        wait_until(lambda: self.calls >= target or bool(self.failures), "the bystander's calls")


@contextlib.contextmanager
def bystander(server: Server) -> Iterator[Bystander]:
    """A well-behaved client served before, during and after the block's attack."""
    watcher = Bystander(server)
    watcher.start()
    try:
        watcher.wait_calls(1)
        yield watcher
        watcher.wait_calls(2)  # after the attack too
    finally:
        watcher.stop()
    assert watcher.failures == [], watcher.failures


def refusals(server: Server, limit: str) -> float:
    """Clients the gRPC port refused or cut off by `limit`, from /metrics."""
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    for labels, value in re.findall(r"^modelport_transport_refused_total{(.*)} (\S+)$", text, re.M):
        if {'port="grpc"', f'limit="{limit}"'} <= set(labels.split(",")):
            return float(value)
    return 0.0


def calm(client: RawClient, reason: bytes) -> None:
    """The server sent GOAWAY ENHANCE_YOUR_CALM for `reason`, and closed the connection."""
    assert client.wait_closed(10), f"still open after {client.frames_sent} frames"
    assert client.goaway is not None, f"no GOAWAY; {client.frames_sent} frames sent"
    assert client.goaway[1:] == (CALM, reason), client.goaway


# -- floods --------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_data", [True, False], ids=["with-data", "without-data"])
def test_rapid_reset_is_sent_away(
    timeouts_server: Server, with_data: bool, connect: Connect
) -> None:
    """HEADERS (+ 1-byte DATA) + RST_STREAM cycles (CVE-2023-44487): DATA refills nothing."""
    with bystander(timeouts_server):
        attacker = connect(timeouts_server.grpc_port)
        outcome = rapid_reset(attacker, seconds=10, with_data=with_data)
        calm(attacker, b"too many streams reset")
        assert outcome.goaway is not None and outcome.goaway[0] < 2_000  # the streams it opened


def test_reconnecting_does_not_refill_the_reset_budget(timeouts_server: Server) -> None:
    """Short connections from one address, 40 resets each: the budget is the address's, so once
    it is spent every new connection is cut off before its resets are through, or turned away
    as it connects."""
    resets_each = 40
    last_stream = 2 * resets_each - 1
    with bystander(timeouts_server):
        outcomes = reconnect_flood(timeouts_server.grpc_port, next(SOURCES), 30, resets_each)
    assert len(outcomes) == 30
    assert outcomes[0].goaway is None  # a fresh address has its whole budget
    later = outcomes[-10:]
    reasons = {(CALM, b"too many streams reset"), (CALM, REFUSED_ADDRESS)}
    assert all(o.goaway is not None and o.goaway[1:] in reasons for o in later), [
        o.describe() for o in outcomes
    ]
    assert all(o.goaway is not None and o.goaway[0] < last_stream for o in later)


def test_settings_flood_is_sent_away(timeouts_server: Server, connect: Connect) -> None:
    """Maximum-size SETTINGS frames (2,730 settings each) are refused before they are read."""
    with bystander(timeouts_server):
        attacker = connect(timeouts_server.grpc_port)
        settings_flood(attacker, seconds=10)
        calm(attacker, b"SETTINGS frame too large")


def test_pings_between_one_byte_data_frames_are_sent_away(
    timeouts_server: Server, connect: Connect
) -> None:
    with bystander(timeouts_server):
        attacker = connect(timeouts_server.grpc_port)
        ping_data_flood(attacker, seconds=10)
        calm(attacker, b"too many frames for the calls they carry")


# -- header lists --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        [*request_fields(SERVER_LIVE), (b"X-Upper", b"1")],
        [(b":path", SERVER_LIVE), *request_fields(SERVER_LIVE)],
        [*request_fields(SERVER_LIVE), (b"connection", b"keep-alive")],
    ],
    ids=["uppercase-name", "duplicate-pseudo-header", "connection-header"],
)
def test_malformed_header_lists_reset_only_their_stream(
    timeouts_server: Server, fields: list[tuple[bytes, bytes]], connect: Connect
) -> None:
    with bystander(timeouts_server):
        attacker = connect(timeouts_server.grpc_port)
        bad = attacker.new_stream()
        attacker.send(attacker.headers_frame(bad, fields=fields))
        attacker.send_body(bad, grpc_message(b""))
        assert attacker.wait_for(lambda: attacker.stream(bad).ended, 10)
        assert attacker.stream(bad).reset == ErrorCode.PROTOCOL_ERROR
        fine = attacker.call(SERVER_LIVE, b"")  # the same connection still serves
        assert attacker.wait_for(lambda: attacker.stream(fine).ended, 10)
        assert attacker.stream(fine).status == (0, "")
        assert attacker.goaway is None and not attacker.closed


# -- timeouts ------------------------------------------------------------------------------------


def test_idle_connections_are_sent_away(timeouts_server: Server, connect: Connect) -> None:
    """With no call in progress for --idle-timeout: GOAWAY NO_ERROR, then the connection closes
    (one that made a call, and one that never did)."""
    with bystander(timeouts_server):
        used = connect(timeouts_server.grpc_port)
        unused = connect(timeouts_server.grpc_port)
        stream = used.call(SERVER_LIVE, b"")
        assert used.wait_for(lambda: used.stream(stream).ended, 10)
        assert used.stream(stream).status == (0, "")
        called = time.monotonic() - used.started
        for client in (used, unused):
            assert client.wait_closed(10)
            assert client.goaway is not None and client.goaway[1:] == (ErrorCode.NO_ERROR, b"")
        assert used.closed_after is not None and used.closed_after >= called + IDLE


def test_a_preface_without_settings_is_closed(timeouts_server: Server, connect: Connect) -> None:
    with bystander(timeouts_server):
        attacker = connect(timeouts_server.grpc_port, greet=False)
        silent = connect(timeouts_server.grpc_port, greet=False)
        before = refusals(timeouts_server, "header_timeout")
        attacker.send(f.PREFACE)
        calm(attacker, b"no preface and SETTINGS in time")
        assert silent.wait_closed(10) and silent.kinds == []  # nothing to say goodbye to
        # the preface timeout closed both, not the idle timeout that comes later
        assert refusals(timeouts_server, "header_timeout") == before + 2


@pytest.mark.parametrize("greeted", [False, True], ids=["preface", "frame"])
def test_bytes_dripped_one_at_a_time_are_cut_off(
    timeouts_server: Server, greeted: bool, connect: Connect
) -> None:
    """One byte every 0.2 s: of the preface (--header-timeout), or of a HEADERS frame after
    it (--stall-timeout)."""
    reason, limit = (
        ("a frame stalled half received", "frame_stall")
        if greeted
        else ("no preface and SETTINGS in time", "header_timeout")
    )
    before = refusals(timeouts_server, limit)
    with bystander(timeouts_server):
        attacker = connect(timeouts_server.grpc_port, greet=greeted)
        if greeted:
            drip = attacker.headers_frame(attacker.new_stream(), SERVER_LIVE, end=True)
        else:
            drip = f.PREFACE + f.settings({})
        for index in range(len(drip) - 1):  # never the last byte
            if not attacker.send(drip[index : index + 1]) or attacker.wait_closed(0.2):
                break
        assert attacker.wait_closed(10), "a dripping client was never cut off"
        assert attacker.frames_sent < len(drip) - 1
        if greeted:
            calm(attacker, reason.encode())
        else:  # no preface yet: nothing to say goodbye to
            assert attacker.goaway is None
        assert refusals(timeouts_server, limit) == before + 1  # not the idle timeout


# -- the connection cap --------------------------------------------------------------------------


def test_connections_past_the_cap_are_refused_politely(
    tmp_path_factory: pytest.TempPathFactory, connect: Connect
) -> None:
    """--max-connections 3 on each port: the bystander holds one gRPC connection, two attackers
    the rest; a fourth is told why and closed, while the bystander, the HTTP port and (once an
    attacker leaves) new gRPC clients are served."""
    with serving(tmp_path_factory, "cap", "--max-connections", "3") as server, bystander(server):
        holders = [connect(server.grpc_port) for _ in range(2)]
        assert all(h.goaway is None and not h.closed for h in holders)
        refused = connect(server.grpc_port)
        assert refused.wait_closed(10)
        assert refused.goaway == (0, CALM, b"the server is at its connection limit")
        assert httpx.get(f"{server.base}/v2/health/ready", timeout=10).status_code == 200
        answer = httpx.post(
            f"{server.base}/v2/models/mlp/infer",
            json={
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}
                ]
            },
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        holders[0].close()  # an attacker leaves: its place is a new client's
        newcomer = next(SOURCES)

        def newcomer_served() -> bool:
            client = RawClient(server.grpc_port, newcomer)
            try:
                stream = client.call(SERVER_LIVE, b"")
                client.wait_for(lambda: client.stream(stream).ended or client.closed, 10)
                return client.stream(stream).status == (0, "")
            finally:
                client.close()

        wait_until(newcomer_served, "a new gRPC client served after an attacker left")
        holders[1].close()


# -- memory budgets ------------------------------------------------------------------------------


def rss_bytes(server: Server) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class RssPeak:
    """The server's largest VmRSS while the block runs, sampled every 10 ms."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes(self.server))

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_unfinished_request_messages_are_bounded_and_ended(
    budgets_server: Server, connect: Connect
) -> None:
    """4 connections x 16 calls, each sending all of a 1 MiB message but its last byte: 64 MiB
    asked for, but the server-wide budget (--max-pending-bytes 10 MiB) refuses what does not fit
    with UNAVAILABLE, and the messages held are ended after --stall-timeout (plus 1 s per MiB
    declared)."""
    server = budgets_server
    client = triton.InferenceServerClient(server.grpc_url)
    wide_call(client)  # the big buffers a real 4 MiB call needs are part of the baseline
    client.close()
    baseline = rss_bytes(server)
    with bystander(server), RssPeak(server) as rss:
        attackers = [connect(server.grpc_port) for _ in range(4)]
        opened = [(a, unfinished_messages(a, 16, 1 << 20)) for a in attackers]
        seen: list[StreamSeen] = []
        for attacker, streams in opened:
            assert attacker.wait_for(
                lambda a=attacker, s=streams: all(a.stream(i).ended for i in s), 30
            )
            seen += [attacker.stream(i) for i in streams]
    grown = rss.peak - baseline
    assert grown < 40 << 20, f"RSS grew {grown >> 20} MiB for 64 MiB of unfinished messages"
    statuses = [s.status for s in seen]
    assert len(statuses) == 64
    refused = [s for s in statuses if s and s[0] == 14]
    stalled = [s for s in statuses if s and s[0] == 4]
    assert refused and all("still arriving" in m for _, m in refused), statuses
    assert stalled and all("stalled" in m for _, m in stalled), statuses
    assert len(refused) + len(stalled) == 64, statuses
    for attacker in attackers:
        assert attacker.goaway is None
    client = triton.InferenceServerClient(server.grpc_url)
    wide_call(client)  # the budget is free again
    client.close()


def test_a_client_that_never_opens_its_window_is_bounded_and_cut_off(
    budgets_server: Server, connect: Connect
) -> None:
    """SETTINGS_INITIAL_WINDOW_SIZE 0, then four calls for 4 MiB answers: two wait (8 MiB),
    the others would pass the server's budget for answers waiting (10 MiB) and get
    RESOURCE_EXHAUSTED; after --stall-timeout with no window opened the connection is cut and
    the bytes it held are freed."""
    server = budgets_server
    request = service_pb2.ModelInferRequest(model_name="wide")
    request.inputs.add(name="x", datatype="FP32", shape=[1, WIDE_ROW])
    request.raw_input_contents.append(np.zeros(WIDE_ROW, np.float32).tobytes())
    message = request.SerializeToString()
    with bystander(server):
        attacker = connect(server.grpc_port, settings={Setting.INITIAL_WINDOW_SIZE: 0})
        streams = []
        for _ in range(4):
            stream = attacker.call(MODEL_INFER, message)
            assert attacker.wait_for(lambda s=stream: bool(attacker.stream(s).headers), 30)
            streams.append(stream)
        waiting = [attacker.stream(s) for s in streams[:2]]
        assert all(s.status is None and s.body_bytes == 0 for s in waiting)
        for stream in streams[2:]:
            status = attacker.stream(stream).status
            assert status is not None and status[0] == 8, status  # RESOURCE_EXHAUSTED
        calm(attacker, b"the client takes none of its answers")
        client = triton.InferenceServerClient(server.grpc_url)
        wide_call(client)  # the 8 MiB the attacker held are free again
        client.close()
