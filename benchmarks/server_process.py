"""`modelport serve` as a child process for the benchmarks: free ports, readiness, stop by PID."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from loadgen import BenchmarkError

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """modelport serve as a child process; stopped by its PID."""

    def __init__(self, repo: Path, log: Path, extra_args: Sequence[str]) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port()
        while self.grpc_port == self.http_port:
            self.grpc_port = free_port()
        exe = Path(sys.executable).with_name("modelport")
        self.cmd = [
            str(exe) if exe.is_file() else "modelport",
            "serve",
            "--model-repository",
            str(repo),
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--host",
            HOST,
            *extra_args,
        ]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://{HOST}:{self.http_port}"

    def start(self) -> None:
        with self.log.open("w") as out:
            out.write(f"$ {shlex.join(self.cmd)}\n")
            out.flush()
            # Own session: a Ctrl-C in the terminal reaches only us; we stop the server ourselves.
            self.proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text().splitlines()[-n:])
        return ""

    def wait_ready(self, timeout_s: float) -> float:
        t0 = time.monotonic()
        last = "no answer yet"
        while time.monotonic() - t0 < timeout_s:
            if not self.alive():
                assert self.proc is not None
                raise BenchmarkError(
                    f"server exited with {self.proc.returncode} before it was ready:\n"
                    f"{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.base}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
                    last = f"HTTP {r.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except (OSError, urllib.error.URLError) as e:
                last = str(e)
            time.sleep(0.2)
        raise BenchmarkError(
            f"server not ready after {timeout_s:.0f} s ({last}):\n{self.log_tail()}"
        )

    def stop(self) -> int | None:
        """SIGTERM the PID, wait up to 15 s, then SIGKILL. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode
