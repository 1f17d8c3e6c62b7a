"""Test helpers: build model repositories, start a real `modelport serve` process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import onnx

from modelport.examples import onnx_models

MODELPORT = Path(sys.executable).with_name("modelport")


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`modelport ARGS` in cwd, with a bare environment (no venv on PATH, HOME in cwd)."""
    return subprocess.run(
        [str(MODELPORT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
        env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "HOME": str(cwd)},
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def add_model(
    repo: Path, name: str, model: onnx.ModelProto | bytes, version: int = 1, config: str = ""
) -> Path:
    version_dir = repo / name / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / "model.onnx"
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    if config:
        (repo / name / "config.yaml").write_text(config)
    return path


def standard_repository(repo: Path) -> Path:
    """The models most e2e tests use."""
    add_model(repo, "add_sub", onnx_models.add_sub("FP32", 16))
    add_model(repo, "mlp", onnx_models.mlp((64, 256, 256, 10), seed=1))
    add_model(
        repo,
        "mlp",
        onnx_models.mlp((64, 256, 256, 10), seed=2),
        version=2,
        config="version_policy: all\n",
    )
    add_model(repo, "text_lower", onnx_models.text_lower())
    return repo


class Server:
    def __init__(
        self, process: subprocess.Popen[bytes], http_port: int, grpc_port: int, log: Path
    ) -> None:
        self.process = process
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.url = f"127.0.0.1:{http_port}"
        self.grpc_url = f"127.0.0.1:{grpc_port}"
        self.base = f"http://{self.url}"
        self.log = log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


def wait_ready(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"modelport exited early:\n{server.log_text()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.base}/v2/health/ready", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"modelport not ready after {timeout}s:\n{server.log_text()}")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds. The deadline only ends a test whose server never gets
    there; it is no assertion on how fast the server is."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout}s")
        time.sleep(0.05)


def in_flight(server: Server, model: str, version: str = "1") -> float:
    """Requests inside the server for one model version (queued or running), from /metrics."""
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    labels = f'model="{model}",version="{version}"'
    match = re.search(rf"^modelport_inflight_requests{{{labels}}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def spawn_server(repo: Path | None, log: Path, *args: str, append: bool = False) -> Server:
    """Start `modelport serve` on free ports (not waiting for it to be ready)."""
    port, grpc_port = free_port(), free_port()
    command = [
        str(MODELPORT),
        "serve",
        "--host",
        "127.0.0.1",
        "--http-port",
        str(port),
        "--grpc-port",
        str(grpc_port),
        *args,
    ]
    if repo is not None:
        command += ["--model-repository", str(repo)]
    with log.open("ab" if append else "wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"}
        )
    return Server(process, port, grpc_port, log)


@contextlib.contextmanager
def run_server(repo: Path | None, log: Path, *args: str) -> Iterator[Server]:
    server = spawn_server(repo, log, *args)
    process = server.process
    try:
        wait_ready(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
