"""Helpers of the SLO e2e tests: Python models written into a test's repository, a load
generator, and a real Prometheus process on a free port."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import free_port, wait_until

TENSORS = """\
max_batch_size: 8
inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]
outputs: [{name: y, datatype: FP32, shape: [-1, 4]}]
runtime: {executor: thread}
"""
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def python_version(repo: Path, name: str, version: int, code: str) -> None:
    directory = repo / name / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.py").write_text(textwrap.dedent(code).lstrip())


def write_config(repo: Path, name: str, extra: dict[str, Any]) -> None:
    text = TENSORS + (yaml.safe_dump(extra, sort_keys=False) if extra else "")
    (repo / name / "config.yaml").write_text(text)


def sleeping_model(seconds: float) -> str:
    return f"""
        import time
        import numpy as np


        class Model:
            def predict(self, inputs):
                time.sleep({seconds})
                return {{"y": np.asarray(inputs["x"], dtype=np.float32) + 1}}
    """


def failing_model(every: int) -> str:
    """Fails one run in `every` (a server error, 500), whatever the request."""
    return f"""
        import itertools
        import threading
        import numpy as np


        class Model:
            def load(self):
                self.runs = itertools.count(1)
                self.lock = threading.Lock()

            def predict(self, inputs):
                with self.lock:
                    run = next(self.runs)
                if run % {every} == 0:
                    raise RuntimeError("the canary broke on purpose")
                return {{"y": np.asarray(inputs["x"], dtype=np.float32) + 2}}
    """


@dataclass
class Load:
    """Requests sent from threads until stopped: (path, sent at, status, the answering version
    or the error message)."""

    base: str
    paths: list[str]
    results: list[tuple[str, float, int, str | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def _send(self, path: str) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self.stop.is_set():
                sent = time.time()
                try:
                    reply = client.post(path, json=BODY)
                    document = reply.json()
                except Exception as exc:  # recorded: the test sees it as a failed request
                    self.errors.append(repr(exc))
                    self.results.append((path, sent, 0, None))
                    continue
                ok = reply.status_code == 200
                detail = document.get("model_version") if ok else document.get("error")
                self.results.append((path, sent, reply.status_code, detail))

    def start(self, per_path: int = 1) -> Load:
        for path in self.paths:
            for _ in range(per_path):
                thread = threading.Thread(target=self._send, args=(path,), daemon=True)
                thread.start()
                self.threads.append(thread)
        return self

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def need(binary: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/bin:/usr/sbin:/bin")
    if path is None:
        pytest.fail(f"{binary} is missing: run scripts/install_test_deps.sh (Debian: prometheus)")
    return path


@dataclass
class Prometheus:
    base: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **params: str) -> Any:
        reply = httpx.get(f"{self.base}{path}", params=params, timeout=10)
        document = reply.json()
        assert reply.status_code == 200 and document["status"] == "success", document
        return document["data"]


@contextlib.contextmanager
def prometheus(tmp: Path, target: str, rules: Path) -> Iterator[Prometheus]:
    """A real Prometheus scraping `target` every second and evaluating `rules` every second."""
    binary = need("prometheus")
    config = tmp / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "scrape_configs": [
                    {"job_name": "modelport", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    running = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:

        def ready() -> bool:
            assert process.poll() is None, log.read_text()
            with contextlib.suppress(httpx.TransportError):
                return httpx.get(f"{running.base}/-/ready", timeout=1).status_code == 200
            return False

        wait_until(ready, "prometheus ready", timeout=60)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
