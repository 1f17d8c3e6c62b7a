"""The REST infer path in process: the real ASGI app from `modelport.app.build`, over a temporary
model repository, driven by httpx through ASGITransport (no sockets, no uvicorn), with the ASGI
lifespan run for real (startup loads the models, shutdown unloads them). Only build() and HTTP are
used.

The app imports our generated gRPC messages, which register the same `inference.*` protobuf names
as tritonclient's copies, and other test modules import tritonclient into the pytest process. So
app and client run together in one spawned worker process (started once for the module), and each
test hands it a scenario; failures come back as the scenario's own exception."""

from __future__ import annotations

import asyncio
import gzip
import json
import multiprocessing
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.types import ASGIApp, Message

from modelport.examples import onnx_models
from tests.support import add_model, free_port

LIMIT = 64 * 1024  # --max-request-size
WIDTH = 4
READY_SECS = 60.0
"""How long a test waits for the models to load; it only ends a test whose server never gets
ready, nothing passes or fails by it."""

Scenario = Callable[[httpx.AsyncClient], Awaitable[None]]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("in_process")
    add_model(root, "add_sub", onnx_models.add_sub("FP32", WIDTH))
    return root


@pytest.fixture(scope="module")
def fresh_process() -> Iterator[Executor]:
    """A worker process that has never imported tritonclient."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Run the app's ASGI lifespan: startup before the block, shutdown after it."""
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}

    async def run() -> None:
        await app(scope, to_app.get, from_app.put)

    running = asyncio.create_task(run())

    async def expect(kind: str) -> None:
        message = asyncio.ensure_future(from_app.get())
        await asyncio.wait({message, running}, return_when=asyncio.FIRST_COMPLETED)
        if not message.done():
            message.cancel()
            running.result()  # raises what ended the lifespan, if anything did
            raise AssertionError(f"the app ended its lifespan before {kind}")
        assert message.result()["type"] == kind, message.result()

    await to_app.put({"type": "lifespan.startup"})
    await expect("lifespan.startup.complete")
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        await expect("lifespan.shutdown.complete")
        await running


async def wait_ready(client: httpx.AsyncClient) -> None:
    """The lifespan starts the initial load in the background; poll readiness until it is done."""
    deadline = asyncio.get_running_loop().time() + READY_SECS
    while (await client.get("/v2/health/ready")).status_code != 200:
        assert asyncio.get_running_loop().time() < deadline, "the models never got ready"
        await asyncio.sleep(0.01)


def serve(repo: Path, scenario: Scenario) -> None:
    """(In the worker) build the server over `repo`, start it, run `scenario` against it, stop
    it. Warnings are errors, as in the test suite."""
    from modelport.app import build  # here only: see the module's docstring
    from modelport.settings import ServerSettings

    async def main() -> None:
        settings = ServerSettings(
            model_repository=repo, grpc_port=free_port(), max_request_bytes=LIMIT
        )
        app = build(settings).http
        async with lifespan(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                await wait_ready(client)
                await scenario(client)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        asyncio.run(main())


def pair(rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    a = np.arange(rows * WIDTH, dtype=np.float32).reshape(rows, WIDTH)
    return a, np.full_like(a, 0.5)


def json_body(a: np.ndarray, b: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
            for name, x in (("INPUT0", a), ("INPUT1", b))
        ],
        **extra,
    }


def outputs_of(answer: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        out["name"]: np.array(out["data"], np.float32).reshape(out["shape"])
        for out in answer["outputs"]
    }


INFER = "/v2/models/add_sub/infer"


async def _json_infer_echoes_the_request_id(client: httpx.AsyncClient) -> None:
    a, b = pair()
    reply = await client.post(INFER, json=json_body(a, b, id="req-42"))
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json", reply.headers
    answer = reply.json()
    assert answer["id"] == "req-42", answer
    assert (answer["model_name"], answer["model_version"]) == ("add_sub", "1"), answer
    got = outputs_of(answer)
    np.testing.assert_array_equal(got["OUTPUT0"], a + b)
    np.testing.assert_array_equal(got["OUTPUT1"], a - b)
    versioned = await client.post(
        "/v2/models/add_sub/versions/1/infer", json=json_body(a, b, id="v1")
    )
    assert versioned.status_code == 200 and versioned.json()["id"] == "v1", versioned.text
    unnamed = await client.post(INFER, json=json_body(a, b))
    assert unnamed.status_code == 200 and "id" not in unnamed.json(), unnamed.text


def test_json_infer_echoes_the_request_id(repo: Path, fresh_process: Executor) -> None:
    fresh_process.submit(serve, repo, _json_infer_echoes_the_request_id).result()


async def _binary_tensor_extension_both_ways(client: httpx.AsyncClient) -> None:
    a, b = pair(3)
    header = {
        "id": "bin-1",
        "inputs": [
            {
                "name": name,
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"binary_data_size": x.nbytes},
            }
            for name, x in (("INPUT0", a), ("INPUT1", b))
        ],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header).encode()
    reply = await client.post(
        INFER,
        content=head + a.tobytes() + b.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/octet-stream", reply.headers
    length = int(reply.headers["inference-header-content-length"])
    answer = json.loads(reply.content[:length])
    assert answer["id"] == "bin-1", answer
    [output] = answer["outputs"]  # only the output asked for
    assert output["name"] == "OUTPUT0" and output["shape"] == [3, WIDTH], output
    size = output["parameters"]["binary_data_size"]
    assert size == a.nbytes == len(reply.content) - length, (size, len(reply.content), length)
    got = np.frombuffer(reply.content[length:], np.float32).reshape(output["shape"])
    np.testing.assert_array_equal(got, a + b)


def test_binary_tensor_extension_both_ways(repo: Path, fresh_process: Executor) -> None:
    fresh_process.submit(serve, repo, _binary_tensor_extension_both_ways).result()


async def _get_on_the_infer_path_is_405_json_with_allow(client: httpx.AsyncClient) -> None:
    for path in (INFER, "/v2/models/add_sub/versions/1/infer"):
        reply = await client.get(path)
        assert reply.status_code == 405, reply.text
        assert reply.headers["allow"] == "POST", reply.headers
        assert reply.headers["content-type"] == "application/json", reply.headers
        assert reply.json() == {"error": f"Method Not Allowed: GET {path}"}, reply.text


def test_get_on_the_infer_path_is_405_json_with_allow(repo: Path, fresh_process: Executor) -> None:
    fresh_process.submit(serve, repo, _get_on_the_infer_path_is_405_json_with_allow).result()


async def _unknown_model_and_malformed_json_answer_errors(client: httpx.AsyncClient) -> None:
    a, b = pair()
    unknown = await client.post("/v2/models/nope/infer", json=json_body(a, b))
    assert unknown.status_code == 404, unknown.text
    assert "unknown model" in unknown.json()["error"] and "nope" in unknown.json()["error"], (
        unknown.text
    )
    malformed = await client.post(INFER, content=b'{"inputs": [')
    assert malformed.status_code == 400, malformed.text
    assert "malformed JSON" in malformed.json()["error"], malformed.text
    still = await client.post(INFER, json=json_body(a, b))
    assert still.status_code == 200, still.text


def test_unknown_model_and_malformed_json_answer_errors(
    repo: Path, fresh_process: Executor
) -> None:
    fresh_process.submit(serve, repo, _unknown_model_and_malformed_json_answer_errors).result()


async def _bodies_over_the_request_size_limit_get_413(client: httpx.AsyncClient) -> None:
    declared = await client.post(INFER, content=b" " * (LIMIT + 1))
    assert declared.status_code == 413, declared.text
    assert "exceeds the limit" in declared.json()["error"], declared.text
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for index in range(LIMIT // 1000 + 2):
            sent.append(index)
            yield b" " * 1000

    length = {"Content-Length": str(1000 * (LIMIT // 1000 + 2))}
    refused = await client.post(INFER, content=chunks(), headers=length)
    assert refused.status_code == 413, refused.text
    assert sent == [], sent  # refused on its Content-Length, before any of it was read
    streamed = await client.post(INFER, content=chunks())  # no Content-Length: counted
    assert streamed.status_code == 413, streamed.text
    assert "exceeds the limit" in streamed.json()["error"], streamed.text
    inflating = await client.post(
        INFER,
        content=gzip.compress(b" " * (4 * LIMIT)),
        headers={"Content-Encoding": "gzip"},
    )
    assert len(gzip.compress(b" " * (4 * LIMIT))) < LIMIT  # small on the wire
    assert inflating.status_code == 413, inflating.text
    assert "decompressed request body exceeds the limit" in inflating.json()["error"], (
        inflating.text
    )
    a, b = pair()
    at_limit = json.dumps(json_body(a, b)).encode().ljust(LIMIT)  # JSON allows the padding
    reply = await client.post(INFER, content=at_limit)
    assert reply.status_code == 200, reply.text


def test_bodies_over_the_request_size_limit_get_413(repo: Path, fresh_process: Executor) -> None:
    fresh_process.submit(serve, repo, _bodies_over_the_request_size_limit_get_413).result()


async def _gzip_request_bodies_are_inflated(client: httpx.AsyncClient) -> None:
    a, b = pair()
    packed = gzip.compress(json.dumps(json_body(a, b, id="zipped")).encode())
    reply = await client.post(INFER, content=packed, headers={"Content-Encoding": "gzip"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["id"] == "zipped", reply.text
    np.testing.assert_array_equal(outputs_of(reply.json())["OUTPUT0"], a + b)
    broken = await client.post(INFER, content=packed[:-8], headers={"Content-Encoding": "gzip"})
    assert broken.status_code == 400, broken.text
    assert "truncated" in broken.json()["error"], broken.text


def test_gzip_request_bodies_are_inflated(repo: Path, fresh_process: Executor) -> None:
    fresh_process.submit(serve, repo, _gzip_request_bodies_are_inflated).result()
