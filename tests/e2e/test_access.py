"""API keys on a real server, with real clients: REST (httpx, tritonclient.http), TF Serving
REST, gRPC unary and streaming (tritonclient.grpc, raw grpcio), the audit log, key file reload
and per-key rate limits. One server for the module (explicit model control, so the management
calls do something)."""

from __future__ import annotations

import contextlib
import queue
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from modelport.security.keys import KeyEntry, generate_key, key_digest, write_key_file
from tests.support import Server, run_cli, run_server, wait_until

SCOPES = {
    "ci": (("inference",), ["add_*", "text_*"], None),
    "admin": (("inference", "management", "metrics"), None, None),
    "scraper": (("metrics",), None, None),
    "slow": (("inference",), None, {"requests_per_second": 0.2, "burst": 2}),
}
ADD_SUB_BODY = {
    "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [2.0] * 16},
    ]
}
MLP_BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}


@dataclass
class Keyed:
    server: Server
    keys: dict[str, str]
    key_file: Path
    entries: list[KeyEntry]

    def headers(self, name: str) -> dict[str, str]:
        # lowercase: gRPC metadata keys must be, HTTP does not care
        return {"authorization": f"Bearer {self.keys[name]}"}

    def get(self, path: str, key: str | None = None) -> httpx.Response:
        headers = self.headers(key) if key else {}
        return httpx.get(self.server.base + path, headers=headers, timeout=30)

    def post(self, path: str, key: str | None, body: object = None) -> httpx.Response:
        headers = self.headers(key) if key else {}
        return httpx.post(self.server.base + path, json=body, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def keyed(standard_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    folder = tmp_path_factory.mktemp("access")
    keys = {name: generate_key() for name in SCOPES}
    entries = [
        KeyEntry.model_validate(
            {"name": name, "sha256": key_digest(keys[name]), "scopes": scopes}
            | ({"models": models} if models else {})
            | ({"rate_limit": limit} if limit else {})
        )
        for name, (scopes, models, limit) in SCOPES.items()
    ]
    key_file = folder / "keys.yaml"
    write_key_file(key_file, entries)
    log = folder / "server.log"
    args = ("--api-keys", str(key_file), "--model-control-mode", "explicit", "--load-model", "*")
    with run_server(standard_repo, log, *args) as server:
        yield Keyed(server, keys, key_file, entries)
    text = log.read_text()
    assert "Traceback" not in text, text
    for key in keys.values():  # no key ever reaches the log, whatever was refused
        assert key not in text
    assert key_digest(keys["ci"]) not in text


# -- REST -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/v2/models/add_sub", "/v2", "/metrics", "/v2/models/stats", "/v1/models/add_sub", "/nope"],
)
def test_rest_without_a_key_is_401_with_a_bearer_challenge(keyed: Keyed, path: str) -> None:
    reply = keyed.get(path)
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert reply.json() == {"error": "missing API key: send the header 'Authorization: Bearer KEY'"}


def test_rest_with_a_wrong_or_malformed_key_is_401_and_never_echoes_it(keyed: Keyed) -> None:
    wrong = generate_key()
    reply = httpx.post(
        f"{keyed.server.base}/v2/models/add_sub/infer",
        json=ADD_SUB_BODY,
        headers={"Authorization": f"Bearer {wrong}"},
    )
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert reply.json() == {"error": "unknown API key"}
    assert wrong not in reply.text
    assert "refused: an unknown API key from 127.0.0.1" in keyed.server.log_text()
    malformed = httpx.get(
        f"{keyed.server.base}/v2/models/add_sub", headers={"Authorization": keyed.keys["ci"]}
    )
    assert malformed.status_code == 401
    assert malformed.headers["www-authenticate"] == 'Bearer error="invalid_request"'
    assert keyed.keys["ci"] not in malformed.text


def test_rest_inside_scope_and_models_is_200_outside_is_403(keyed: Keyed) -> None:
    reply = keyed.post("/v2/models/add_sub/infer", "ci", ADD_SUB_BODY)
    assert reply.status_code == 200
    assert reply.json()["outputs"][0]["data"] == [3.0] * 16
    assert keyed.get("/v2/models/add_sub/ready", "ci").status_code == 200
    assert keyed.get("/v2/models/text_lower/config", "ci").status_code == 200
    assert keyed.get("/v2", "ci").status_code == 200

    for path in ("/v2/models/mlp", "/v2/models/mlp/versions/2/ready"):
        reply = keyed.get(path, "ci")
        assert reply.status_code == 403
        assert reply.json() == {"error": "API key 'ci' may not use model 'mlp'"}
    reply = keyed.post("/v2/models/mlp/infer", "ci", MLP_BODY)
    assert reply.status_code == 403
    assert keyed.post("/v2/models/mlp/infer", "admin", MLP_BODY).status_code == 200


def test_rest_health_is_open(keyed: Keyed) -> None:
    assert keyed.get("/v2/health/live").status_code == 200
    assert keyed.get("/v2/health/ready").status_code == 200


def test_rest_metrics_need_the_metrics_scope(keyed: Keyed) -> None:
    reply = keyed.get("/metrics", "ci")
    assert reply.status_code == 403
    assert reply.json() == {"error": "API key 'ci' has no 'metrics' scope"}
    assert keyed.get("/v2/models/add_sub/stats", "ci").status_code == 403
    reply = keyed.get("/metrics", "scraper")
    assert reply.status_code == 200
    assert "modelport_access_refused_total" in reply.text
    assert 'modelport_access_failed_attempts_total{client="127.0.0.1"}' in reply.text
    assert keyed.get("/v2/models/add_sub/stats", "scraper").status_code == 200
    assert keyed.get("/v2/models/add_sub", "scraper").status_code == 403  # metrics only


def test_rest_management_needs_the_management_scope_and_is_audited(keyed: Keyed) -> None:
    assert keyed.post("/v2/repository/index", "ci").status_code == 403
    assert keyed.post("/v2/repository/models/text_lower/unload", "ci").status_code == 403
    assert keyed.post("/v2/repository/index", "admin").status_code == 200
    assert keyed.post("/v2/repository/models/text_lower/unload", "admin").status_code == 200
    assert keyed.post("/v2/repository/models/text_lower/load", "admin").status_code == 200
    reply = keyed.post("/v2/repository/models/no_such_model/load", "admin")
    assert reply.status_code == 404
    log = keyed.server.log_text()
    assert "management: unload model 'text_lower' by key 'admin' from 127.0.0.1: ok" in log
    assert "management: load model 'text_lower' by key 'admin' from 127.0.0.1: ok" in log
    assert "management: load model 'no_such_model' by key 'admin' from 127.0.0.1: 404 " in log
    assert "refused: key 'ci' from 127.0.0.1: API key 'ci' has no 'management' scope" in log


def test_tritonclient_http_sends_the_key_with_headers(keyed: Keyed) -> None:
    client = triton_http.InferenceServerClient(keyed.server.url)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = triton_http.InferInput(name, [1, 16], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
        inputs.append(tensor)
    result = client.infer("add_sub", inputs, headers=keyed.headers("ci"))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2.0))
    with pytest.raises(InferenceServerException, match="unknown API key"):
        client.infer("add_sub", inputs, headers={"Authorization": "Bearer wrong"})
    with pytest.raises(InferenceServerException, match="missing API key"):
        client.get_model_metadata("add_sub")
    with pytest.raises(InferenceServerException, match="may not use model 'mlp'"):
        client.get_model_metadata("mlp", headers=keyed.headers("ci"))
    assert client.is_server_live()  # health: no headers needed


def test_tfserving_rest_needs_a_key_for_the_model(keyed: Keyed) -> None:
    body = {"inputs": {"INPUT0": [[1.0] * 16], "INPUT1": [[1.0] * 16]}}
    assert keyed.post("/v1/models/add_sub:predict", None, body).status_code == 401
    reply = keyed.post("/v1/models/add_sub:predict", "ci", body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"]["OUTPUT0"] == [[2.0] * 16]
    assert keyed.get("/v1/models/add_sub/metadata", "ci").status_code == 200
    reply = keyed.post("/v1/models/mlp/versions/1:predict", "ci", {"instances": [[0.0] * 64]})
    assert reply.status_code == 403
    assert reply.json() == {"error": "API key 'ci' may not use model 'mlp'"}


def test_a_key_over_its_rate_limit_gets_429_and_others_are_unaffected(keyed: Keyed) -> None:
    statuses = [keyed.post("/v2/models/add_sub/infer", "slow", ADD_SUB_BODY) for _ in range(4)]
    assert [reply.status_code for reply in statuses[:2]] == [200, 200]
    refused = statuses[2]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 5
    assert "API key 'slow' is over its rate limit" in refused.json()["error"]
    assert keyed.post("/v2/models/add_sub/infer", "ci", ADD_SUB_BODY).status_code == 200
    scraped = keyed.get("/metrics", "scraper").text
    assert re.search(r'^modelport_key_rate_limited_total\{key="slow"\} [2-9]', scraped, re.M)


# -- gRPC -------------------------------------------------------------------------------------


def grpc_inputs() -> list[triton_grpc.InferInput]:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = triton_grpc.InferInput(name, [1, 16], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
        inputs.append(tensor)
    return inputs


def mlp_inputs() -> list[triton_grpc.InferInput]:
    tensor = triton_grpc.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
    return [tensor]


def test_tritonclient_grpc_unary(keyed: Keyed) -> None:
    client = triton_grpc.InferenceServerClient(keyed.server.grpc_url)
    ci, admin = keyed.headers("ci"), keyed.headers("admin")
    result = client.infer("add_sub", grpc_inputs(), headers=ci)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2.0))
    assert client.is_server_live() and client.is_server_ready()  # open, no key

    with pytest.raises(InferenceServerException) as caught:
        client.infer("add_sub", grpc_inputs())
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    assert "missing API key" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.infer("add_sub", grpc_inputs(), headers={"authorization": "Bearer wrong"})
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as caught:
        client.infer("mlp", mlp_inputs(), headers=ci)
    assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
    assert "API key 'ci' may not use model 'mlp'" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_repository_index(headers=ci)
    assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
    assert "has no 'management' scope" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.get_inference_statistics("add_sub", headers=ci)
    assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
    stats = client.get_inference_statistics("add_sub", headers=keyed.headers("scraper"))
    assert [model.name for model in stats.model_stats] == ["add_sub"]
    index = client.get_model_repository_index(headers=admin)
    assert "add_sub" in {model.name for model in index.models}

    client.unload_model("add_sub", headers=admin)
    client.load_model("add_sub", headers=admin)
    assert client.is_model_ready("add_sub", headers=ci)
    log = keyed.server.log_text()
    assert "management: unload model 'add_sub' by key 'admin' from 127.0.0.1: ok" in log
    assert "management: load model 'add_sub' by key 'admin' from 127.0.0.1: ok" in log


def test_raw_grpcio_sends_the_authorization_metadata(keyed: Keyed) -> None:
    request = service_pb2.ModelMetadataRequest(name="text_lower")
    with grpc.insecure_channel(keyed.server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelMetadata(
            request, metadata=[("authorization", f"Bearer {keyed.keys['ci']}")]
        )
        assert reply.name == "text_lower"
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelMetadata(request)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelMetadata(
                service_pb2.ModelMetadataRequest(name="mlp"),
                metadata=[("authorization", f"Bearer {keyed.keys['ci']}")],
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as caught:  # unknown methods need a key first
            stub.SystemSharedMemoryStatus(service_pb2.SystemSharedMemoryStatusRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_stream_checks_every_request_and_stays_open(keyed: Keyed) -> None:
    client = triton_grpc.InferenceServerClient(keyed.server.grpc_url)
    replies: queue.Queue = queue.Queue()
    client.start_stream(
        callback=lambda result, error: replies.put((result, error)), headers=keyed.headers("ci")
    )
    try:
        client.async_stream_infer("add_sub", grpc_inputs(), request_id="a")
        client.async_stream_infer("mlp", mlp_inputs(), request_id="refused")
        first = [replies.get(timeout=30) for _ in range(2)]
        client.async_stream_infer("add_sub", grpc_inputs(), request_id="b")  # still open
        second = replies.get(timeout=30)
    finally:
        client.stop_stream()
    answered = [result.get_response().id for result, error in [*first, second] if error is None]
    errors = [str(error) for _, error in [*first, second] if error is not None]
    assert sorted(answered) == ["a", "b"]
    assert len(errors) == 1 and "API key 'ci' may not use model 'mlp'" in errors[0]


def test_grpc_stream_without_a_key_is_refused_at_once(keyed: Keyed) -> None:
    client = triton_grpc.InferenceServerClient(keyed.server.grpc_url)
    replies: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    try:
        # the refusal may come back before the request is queued: the client then says the
        # stream is over and hands the error to the callback
        with contextlib.suppress(InferenceServerException):
            client.async_stream_infer("add_sub", grpc_inputs(), request_id="a")
        result, error = replies.get(timeout=30)
    finally:
        client.stop_stream()
    assert result is None and "missing API key" in str(error)
    assert "StatusCode.UNAUTHENTICATED" in str(error)


# -- the key file changing while the server runs ----------------------------------------------


def test_keys_added_and_revoked_with_the_cli_take_effect_without_a_restart(
    keyed: Keyed, tmp_path: Path
) -> None:
    added = run_cli("keys", "add", "fresh", "--api-keys", str(keyed.key_file), cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    fresh = added.stdout.strip()
    headers = {"Authorization": f"Bearer {fresh}"}
    url = f"{keyed.server.base}/v2/models/add_sub"
    started = time.monotonic()
    wait_until(lambda: httpx.get(url, headers=headers).status_code == 200, "the added key")
    assert time.monotonic() - started < 8  # polled about every second (slack for a busy machine)

    revoked = run_cli("keys", "revoke", "fresh", "--api-keys", str(keyed.key_file), cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    wait_until(lambda: httpx.get(url, headers=headers).status_code == 401, "the revoked key")
    assert fresh not in keyed.server.log_text()


def test_a_key_file_that_turns_invalid_refuses_every_key(keyed: Keyed) -> None:
    kept = "every API key is refused until the file is valid again"
    reads = keyed.server.log_text().count("read the key file")
    try:
        keyed.key_file.write_text("keys: [{name: broken\n")
        wait_until(lambda: kept in keyed.server.log_text(), "the error about the broken file")
        time.sleep(2.5)  # a few more polls: still reported once
        log = keyed.server.log_text()
        assert log.count(kept) == 1
        assert f"the key file {keyed.key_file} is not valid YAML" in log
        assert keyed.get("/v2/models/add_sub", "ci").status_code == 401
    finally:
        write_key_file(keyed.key_file, keyed.entries)
    wait_until(
        lambda: keyed.server.log_text().count("read the key file") > reads, "the repaired file"
    )
    wait_until(lambda: keyed.get("/v2/models/add_sub", "ci").status_code == 200, "keys again")
