"""Client input nested deeper than any tensor gets a 400 naming the problem, over TF Serving's
predict and v2 infer, and the server's log grows by one bounded line for it (no traceback)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support import Server, run_server, standard_repository, wait_until

LOG_LINE_BOUND = 2048


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("nesting")
    with run_server(standard_repository(root / "repo"), root / "server.log") as running:
        yield running


def nested(depth: int) -> str:
    return "[" * depth + '"Text"' + "]" * depth


CASES = {
    "tf instances": ("/v1/models/text_lower:predict", '{"instances": %s}', "'instances'"),
    "tf inputs": ("/v1/models/text_lower:predict", '{"inputs": {"text": %s}}', "input 'text'"),
    "v2 data": (
        "/v2/models/text_lower/infer",
        '{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": %s}]}',
        "'data' is",
    ),
}


@pytest.mark.parametrize("depth", [485, 1000])
@pytest.mark.parametrize("case", list(CASES))
def test_deep_data_is_a_400_with_a_bounded_log_line(server: Server, case: str, depth: int) -> None:
    path, template, where = CASES[case]
    request_id = uuid.uuid4().hex
    before = server.log.stat().st_size
    reply = httpx.post(
        f"{server.base}{path}",
        content=(template % nested(depth)).encode(),
        headers={"x-request-id": request_id},
    )
    assert reply.status_code == 400, reply.text
    assert (
        where in reply.json()["error"] and "nested deeper than 64 levels" in reply.json()["error"]
    )
    wait_until(lambda: request_id in server.log_text(), "the request's access log line")
    assert server.log.stat().st_size - before < LOG_LINE_BOUND
    ok = httpx.post(
        f"{server.base}/v1/models/text_lower:predict", json={"instances": ["Text"]}
    ).json()
    assert ok == {"predictions": ["text"]}
