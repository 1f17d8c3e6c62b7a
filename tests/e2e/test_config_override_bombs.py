"""A load request's config override (explicit mode) is YAML from a client: bombs in it are
refused with 400 / INVALID_ARGUMENT at once, over REST and gRPC, and nothing else is held up."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from modelport.examples import onnx_models
from tests.support import Server, add_model, run_server


def billion_laughs() -> str:
    """~600 bytes whose aliases expand to 9**9 (387 million) strings."""
    lines = ['a0: &a0 ["lol"]']
    for level in range(1, 10):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]")
    return "parameters:\n" + "".join(f"  {line}\n" for line in lines)


BOMBS = {
    "billion laughs": (billion_laughs(), "holds more than 100000 values with its aliases"),
    "nested 2,000 deep": ("parameters: " + "[" * 2000 + "]" * 2000, "nesting depth"),
    "nested 200 deep in blocks": (
        "parameters:\n" + "".join(" " * i + "a:\n" for i in range(1, 200)),
        "nested deeper than 64 levels",
    ),
    "an alias inside its own anchor": ("parameters: &me {again: *me}", "inside its own anchor"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("override_bombs")
    add_model(root / "repo", "one", onnx_models.offset(1.0))
    add_model(root / "repo", "two", onnx_models.offset(2.0))
    args = ("--model-control-mode", "explicit", "--load-model", "one")
    with run_server(root / "repo", root / "server.log", *args) as running:
        yield running


class Inferring(threading.Thread):
    """A well-behaved client inferring on model `one` until stopped."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self._url = f"{server.base}/v2/models/one/infer"
        self.statuses: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]}
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set() or not self.statuses:
                self.statuses.append(client.post(self._url, json=body).status_code)


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_a_bomb_in_a_rest_load_is_refused(server: Server, bomb: str) -> None:
    text, problem = BOMBS[bomb]
    other = Inferring(server)
    other.start()
    try:
        reply = httpx.post(
            f"{server.base}/v2/repository/models/two/load",
            json={"parameters": {"config": text}},
            timeout=60,
        )
    finally:
        other.stop.set()
        other.join(timeout=60)
    assert reply.status_code == 400, reply.text
    assert problem in reply.json()["error"]
    assert "the load request's config" in reply.json()["error"]
    assert other.statuses and set(other.statuses) == {200}
    assert httpx.get(f"{server.base}/v2/models/two/ready").status_code != 200  # not loaded
    assert httpx.get(f"{server.base}/v2/health/ready").status_code == 200


@pytest.mark.parametrize("bomb", ["billion laughs", "an alias inside its own anchor"])
def test_a_bomb_in_a_grpc_load_is_invalid_argument(server: Server, bomb: str) -> None:
    text, problem = BOMBS[bomb]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("two", config=text)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert problem in str(caught.value.message())
    x = grpcclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    assert np.allclose(client.infer("one", [x]).as_numpy("y"), 2.0)


def test_a_config_with_a_few_aliases_still_loads(server: Server) -> None:
    text = "parameters:\n  base: &base {threads: 2}\n  copy: *base\nmax_batch_size: 4\n"
    reply = httpx.post(
        f"{server.base}/v2/repository/models/two/load", json={"parameters": {"config": text}}
    )
    assert reply.status_code == 200, reply.text
    config = httpx.get(f"{server.base}/v2/models/two/config").json()
    assert config["max_batch_size"] == 4
    assert httpx.post(f"{server.base}/v2/repository/models/two/unload").status_code == 200


def test_the_server_log_holds_no_traceback(server: Server) -> None:
    assert "Traceback" not in server.log_text()
