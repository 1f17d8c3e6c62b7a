"""TLS on both ports (--tls-cert, --tls-key) with real clients: REST, TF Serving and metrics
over https, tritonclient over https and gRPC, grpc.secure_channel, curl; ALPN, the protocol
versions, shutdown after refused handshakes, and a missing file stopping the start. mTLS is in
test_mtls.py, reloads on SIGHUP in test_tls_reload.py."""

from __future__ import annotations

import signal
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import trustme
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.e2e.tls_support import (
    ADD_SUB_BODY,
    CURL,
    Pki,
    base,
    grpc_credentials,
    grpc_live,
    handshake,
    handshake_error,
    issue,
    pem_file,
    repository,
    tls_server,
    trusting,
)
from tests.support import Server, spawn_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Pki]]:
    root = tmp_path_factory.mktemp("tls")
    pki = issue(root / "pki", trustme.CA())
    with tls_server(repository(root), root / "server.log", pki, trusting(pki.server_ca)) as server:
        yield server, pki


def test_rest_health_metrics_and_tf_serving_over_https(tls: tuple[Server, Pki]) -> None:
    server, pki = tls
    with httpx.Client(base_url=base(server), verify=trusting(pki.server_ca), timeout=10) as client:
        assert client.get("/v2/health/live").status_code == 200
        reply = client.post("/v2/models/add_sub/infer", json=ADD_SUB_BODY)
        assert reply.status_code == 200, reply.text
        assert reply.json()["outputs"][0]["data"] == [2, 3, 4, 5]
        rows = np.ones((2, 8), dtype=np.float32).tolist()
        predicted = client.post("/v1/models/mlp:predict", json={"instances": rows})
        assert predicted.status_code == 200, predicted.text
        assert len(predicted.json()["predictions"]) == 2
        assert "modelport_" in client.get("/metrics").text


def test_plain_http_is_not_served(tls: tuple[Server, Pki]) -> None:
    server, _ = tls
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{server.url}/v2/health/live", timeout=5)


def test_tritonclient_http_over_https(tls: tuple[Server, Pki], tmp_path: Path) -> None:
    server, pki = tls
    ca = pem_file(tmp_path, "ca.pem", pki.server_ca.cert_pem)
    client = triton_http.InferenceServerClient(server.url, ssl=True, ssl_options={"ca_certs": ca})
    try:
        assert client.is_server_ready()
        inputs = [triton_http.InferInput(f"INPUT{i}", [1, 4], "FP32") for i in range(2)]
        inputs[0].set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
        inputs[1].set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        result = client.infer("add_sub", inputs)
        assert result.as_numpy("OUTPUT1").tolist() == [[-1, 0, 1, 2]]
    finally:
        client.close()


def test_tritonclient_grpc_with_ssl(tls: tuple[Server, Pki], tmp_path: Path) -> None:
    server, pki = tls
    ca = pem_file(tmp_path, "ca.pem", pki.server_ca.cert_pem)
    client = triton_grpc.InferenceServerClient(server.grpc_url, ssl=True, root_certificates=ca)
    try:
        assert client.is_server_ready()
        inputs = [triton_grpc.InferInput(f"INPUT{i}", [1, 4], "FP32") for i in range(2)]
        inputs[0].set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
        inputs[1].set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        result = client.infer("add_sub", inputs)
        assert result.as_numpy("OUTPUT0").tolist() == [[1, 2, 3, 4]]
    finally:
        client.close()


def test_grpc_secure_channel(tls: tuple[Server, Pki]) -> None:
    server, pki = tls
    with grpc.secure_channel(server.grpc_url, grpc_credentials(pki.server_ca)) as channel:
        assert grpc_live(channel)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="mlp"), timeout=10)
        assert metadata.inputs[0].name == "input"


@pytest.mark.skipif(CURL is None, reason="curl is not installed on this machine")
def test_curl_with_cacert(tls: tuple[Server, Pki], tmp_path: Path) -> None:
    server, pki = tls
    ca = pem_file(tmp_path, "ca.pem", pki.server_ca.cert_pem)
    url = f"{base(server)}/v2/health/ready"
    done = subprocess.run(
        [str(CURL), "-sS", "--cacert", ca, url], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert '"ready":true' in done.stdout.replace(" ", "")


def test_alpn_h2_on_grpc_and_http1_on_http(tls: tuple[Server, Pki]) -> None:
    server, pki = tls
    context = trusting(pki.server_ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    for port, expected in ((server.grpc_port, "h2"), (server.http_port, "http/1.1")):
        connection, _ = handshake(port, context)
        with connection:
            assert connection.selected_alpn_protocol() == expected


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_1_1_and_older_refused_on_both_ports(tls: tuple[Server, Pki]) -> None:
    server, pki = tls
    old = trusting(pki.server_ca)
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # lets this client offer TLS 1.0/1.1 at all
    tls12 = trusting(pki.server_ca)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    for port in (server.http_port, server.grpc_port):
        assert handshake_error(port, old) is not None
        connection, _ = handshake(port, tls12)  # the same client, allowed TLS 1.2, is served
        with connection:
            assert connection.version() == "TLSv1.2"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_failed_handshakes_leave_nothing_for_the_shutdown_to_wait_for(tmp_path: Path) -> None:
    pki = issue(tmp_path / "pki", trustme.CA())
    with tls_server(
        repository(tmp_path), tmp_path / "server.log", pki, trusting(pki.server_ca)
    ) as server:
        old = trusting(pki.server_ca)
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        for _ in range(3):
            assert handshake_error(server.grpc_port, old) is not None
        server.process.send_signal(signal.SIGTERM)
        # the gRPC server waits up to 5 s for its open connections; a refused handshake must
        # not count as one (it would, forever, if counted from the accept)
        server.process.wait(timeout=4)


# -- refusing to start ------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_missing_key_file_is_named_before_anything_starts(tmp_path: Path, workers: str) -> None:
    pki = issue(tmp_path / "pki", trustme.CA())
    missing = tmp_path / "missing.key"
    args = ("--tls-cert", str(pki.cert), "--tls-key", str(missing), "--workers", workers)
    server = spawn_server(repository(tmp_path), tmp_path / "server.log", *args)
    assert server.process.wait(timeout=60) != 0
    assert f"--tls-key {missing}: no such file" in server.log_text()
    assert "Traceback" not in server.log_text()
