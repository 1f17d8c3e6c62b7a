"""Python models' errors as a client and an operator see them from a real server: the bundled
sentiment pipeline answers 400 to BYTES that are not UTF-8 and keeps serving, and a model.py that
fails to load is FAILED with a reason, and a log line, naming the file and the line."""

from __future__ import annotations

import json
import shutil
import struct
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import modelport.examples
from tests.support import Server, run_server

pytestmark = pytest.mark.e2e

EXAMPLES = Path(modelport.examples.__file__).parent / "repository"

BROKEN_CONFIG = """
inputs: [{name: X, datatype: FP32, shape: [-1]}]
outputs: [{name: Y, datatype: FP32, shape: [-1]}]
"""
BROKEN_MODEL = """
class Model:
    def load(self):
        self.scale = weights * 2

    def predict(self, inputs):
        return {"Y": inputs["X"] * self.scale}
"""
BROKEN_REASON = "model.py, line 3, in load: NameError: name 'weights' is not defined"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The bundled examples as they ship, and a model.py whose load() fails."""
    repo = tmp_path_factory.mktemp("python-errors") / "models"
    shutil.copytree(EXAMPLES, repo)
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.yaml").write_text(textwrap.dedent(BROKEN_CONFIG))
    (repo / "broken" / "1" / "model.py").write_text(textwrap.dedent(BROKEN_MODEL).lstrip())
    with run_server(repo, repo.parent / "server.log") as server:
        yield server


def binary_texts(server: Server, texts: list[bytes]) -> httpx.Response:
    """A v2 binary-tensor request to the sentiment pipeline."""
    payload = b"".join(struct.pack("<I", len(text)) + text for text in texts)
    tensor = {"name": "TEXT", "datatype": "BYTES", "shape": [len(texts)]}
    header = json.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": len(payload)}}]}
    ).encode()
    return httpx.post(
        f"{server.base}/v2/models/sentiment/infer",
        content=header + payload,
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=30,
    )


def test_sentiment_answers_400_to_text_that_is_not_utf8(server: Server) -> None:
    refused = binary_texts(server, [b"great phone", b"caf\xe9 was slow"])
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert "sentiment_tokenize" in error  # the step that refused it
    assert "input 'TEXT': element 1 is not valid UTF-8 (byte 0xe9 at offset 3)" in error
    served = binary_texts(server, [b"great phone, love it", b"slow and broken"])
    assert served.status_code == 200, served.text
    assert [o["name"] for o in served.json()["outputs"]] == ["LABEL", "SCORE"]
    assert server.alive()


def test_a_failed_model_py_names_its_file_and_line(server: Server) -> None:
    rows = httpx.post(f"{server.base}/v2/repository/index", json={}).json()
    broken = next(row for row in rows if row["name"] == "broken")
    assert broken["state"] == "FAILED"
    assert broken["reason"] == BROKEN_REASON  # one line, no traceback
    assert f"failed to load: {BROKEN_REASON}" in server.log_text()
