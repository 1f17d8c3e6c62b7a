"""The image `modelport build` describes, without a container engine: no base image can be
pulled here, so the test runs the Dockerfile's own steps on this machine instead. Its build
stage's RUN lines run in a fresh virtualenv made by the test, with the context's requirements
and wheel where the COPY lines put them; then the final stage's ENV, models and ENTRYPOINT
start the server from that virtualenv, its HEALTHCHECK command must pass, and a real v2 client
gets an answer.

What this does not cover: the base image itself, the USER switch (the test runs as whoever runs
it) and the layer cache; `docker build` on a machine with an engine does.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from modelport.deploy.build_context import make_context
from modelport.deploy.wheel import build_wheel, project_source
from modelport.examples import onnx_models
from modelport.security.keys import generate_key
from tests.support import add_model, free_port, wait_until
from tests.unit.test_image_context import instructions

INSTALL_TIMEOUT = 540
"""pip downloading numpy, onnxruntime and the rest on a machine with an empty pip cache."""


def stages(dockerfile: str) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions(dockerfile):
        if keyword == "FROM":
            found.append([])
        found[-1].append((keyword, arguments))
    return found


class PathMap:
    """Container paths -> where this test put the same files (longest prefix first)."""

    def __init__(self) -> None:
        self.prefixes: dict[str, Path] = {}

    def add(self, inside: str, outside: Path) -> None:
        self.prefixes[inside.rstrip("/")] = outside

    def __call__(self, word: str) -> str:
        for inside in sorted(self.prefixes, key=len, reverse=True):
            if word == inside or word.startswith(inside + "/"):
                return str(self.prefixes[inside]) + word[len(inside) :]
        return word


def run_build_stage(stage: list[tuple[str, str]], context: Path, venv: Path) -> PathMap:
    """The build stage's RUN lines, as written but for the paths (and pip's cache: the image
    skips it to stay small, this test uses it to stay fast)."""
    paths = PathMap()
    paths.add("/opt/modelport", venv)
    ran = []
    for keyword, arguments in stage[1:]:
        if keyword == "COPY":
            source, destination = shlex.split(arguments)
            paths.add(destination, context / source)
        elif keyword == "RUN":
            words = [paths(w) for w in shlex.split(arguments) if w != "--no-cache-dir"]
            if words[:3] == ["python", "-m", "venv"]:
                words[0] = sys.executable
            elif words[0] != str(venv / "bin" / "pip"):
                pytest.fail(f"a RUN step this test does not know how to run: {arguments}")
            done = subprocess.run(
                words, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
            )
            assert done.returncode == 0, f"{arguments}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            ran.append(words[:3])
        elif keyword != "ENV":  # it only turns pip's cache and version check off
            pytest.fail(f"a build-stage instruction this test does not know: {keyword}")
    assert ran, "the build stage ran nothing"
    return paths


@contextlib.contextmanager
def started(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT + 240)
def test_the_dockerfiles_steps_make_a_server_that_serves_the_repository(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    add_model(repo, "add_sub", onnx_models.add_sub("FP32", 16))
    source = project_source()
    assert source is not None
    wheel = build_wheel(source, tmp_path / "wheel")
    context = make_context(repo, "modelport-e2e:1", tmp_path / "context", wheel=wheel).directory
    build, final = stages((context / "Dockerfile").read_text())
    assert build[0] == ("FROM", "python:3.11-slim AS build")
    image_python = final[0][1].removeprefix("python:").removesuffix("-slim")
    assert image_python == f"{sys.version_info.major}.{sys.version_info.minor}", (
        "the image's Python and this test's differ"
    )

    venv = tmp_path / "opt-modelport"
    paths = run_build_stage(build, context, venv)
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import modelport; print(modelport.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Path(where.strip()).is_relative_to(venv), "modelport came from elsewhere"

    steps = dict(final)  # the last of each instruction
    for keyword, arguments in final:
        if keyword == "COPY" and not arguments.startswith("--from"):
            copied, destination = shlex.split(arguments)
            paths.add(destination, context / copied)
    image_env = dict(item.split("=", 1) for item in shlex.split(steps["ENV"]))
    http_port, grpc_port = free_port(), free_port()
    key = generate_key()
    env = {
        **{name: value for name, value in image_env.items() if name.startswith("MODELPORT_")},
        "MODELPORT_MODEL_REPOSITORY": paths(image_env["MODELPORT_MODEL_REPOSITORY"]),
        "MODELPORT_HTTP_PORT": str(http_port),
        "MODELPORT_GRPC_PORT": str(grpc_port),
        "MODELPORT_API_KEY": key,  # what a `docker run -e MODELPORT_API_KEY=...` gives
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "NO_COLOR": "1",
    }
    entry = json.loads(steps["ENTRYPOINT"])
    assert entry == ["modelport", "serve", "--host", "0.0.0.0"]
    # The container listens on every address; here the same command binds loopback only
    # (the last --host wins), as every test server on this machine does.
    command = [str(venv / "bin" / entry[0]), *entry[1:], "--host", "127.0.0.1"]
    probe = json.loads(steps["HEALTHCHECK"].partition(" CMD ")[2])
    assert probe[:2] == ["python", "-c"]

    with started(command, env, tmp_path / "server.log") as server:

        def healthy() -> bool:
            if server.poll() is not None:
                pytest.fail(f"the server exited:\n{(tmp_path / 'server.log').read_text()}")
            check = subprocess.run(
                [sys.executable, "-c", probe[2]], env=env, capture_output=True, timeout=30
            )
            return check.returncode == 0

        wait_until(healthy, "the image's HEALTHCHECK", timeout=90)

        base = f"http://127.0.0.1:{http_port}"
        assert httpx.get(f"{base}/v2/models/add_sub", timeout=10).status_code == 401
        client = triton_http.InferenceServerClient(f"127.0.0.1:{http_port}")
        a = np.arange(16, dtype=np.float32).reshape(1, 16)
        b = np.ones((1, 16), dtype=np.float32)
        inputs = [triton_http.InferInput("INPUT0", [1, 16], "FP32")]
        inputs.append(triton_http.InferInput("INPUT1", [1, 16], "FP32"))
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer("add_sub", inputs, headers={"authorization": f"Bearer {key}"})
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        client.close()
    # stopped by SIGTERM, gracefully (uvicorn ends by re-raising the signal)
    assert server.returncode in (0, -signal.SIGTERM), (tmp_path / "server.log").read_text()
