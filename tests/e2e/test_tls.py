"""TLS and mTLS on both ports (--tls-cert, --tls-key, --tls-client-ca) with real clients, and
the certificates' reload on SIGHUP. Every certificate is made here, with trustme."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import ssl
import subprocess
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
import trustme
from tritonclient.grpc import service_pb2, service_pb2_grpc

from modelport.examples import onnx_models
from tests.support import Server, add_model, spawn_server, wait_until

pytestmark = pytest.mark.e2e

CURL = shutil.which("curl")


@dataclass
class Pki:
    """The files one server reads (`cert`, `key`, `client_ca`) and what clients use."""

    root: Path
    server_ca: trustme.CA
    leaf: trustme.LeafCert
    client_ca: trustme.CA | None = None

    @property
    def cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def key(self) -> Path:
        return self.root / "server.key"

    @property
    def client_ca_file(self) -> Path:
        return self.root / "clients.pem"

    def args(self) -> tuple[str, ...]:
        args = ("--tls-cert", str(self.cert), "--tls-key", str(self.key))
        if self.client_ca is None:
            return args
        return (*args, "--tls-client-ca", str(self.client_ca_file))


def issue(root: Path, server_ca: trustme.CA, client_ca: trustme.CA | None = None) -> Pki:
    """(Re)writes the server's files: a certificate from `server_ca`, and the client CA."""
    root.mkdir(parents=True, exist_ok=True)
    pki = Pki(root, server_ca, server_ca.issue_cert("127.0.0.1", "localhost"), client_ca)
    pki.leaf.cert_chain_pems[0].write_to_path(str(pki.cert))
    pki.leaf.private_key_pem.write_to_path(str(pki.key))
    if client_ca is not None:
        client_ca.cert_pem.write_to_path(str(pki.client_ca_file))
    return pki


def trusting(ca: trustme.CA, client: trustme.LeafCert | None = None) -> ssl.SSLContext:
    """A client context that trusts `ca` only, presenting `client` if given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    if client is not None:
        client.configure_cert(context)
    return context


def pem_file(root: Path, name: str, *blobs: trustme.Blob) -> str:
    path = root / name
    path.write_bytes(b"".join(blob.bytes() for blob in blobs))
    return str(path)


def base(server: Server) -> str:
    return f"https://{server.url}"


def https_ready(server: Server, context: ssl.SSLContext) -> bool:
    with contextlib.suppress(httpx.TransportError):
        reply = httpx.get(f"{base(server)}/v2/health/ready", verify=context, timeout=2)
        return reply.status_code == 200
    return False


@contextlib.contextmanager
def stopped_at_exit(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        if server.alive():
            server.process.send_signal(signal.SIGTERM)
            try:
                server.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


@contextlib.contextmanager
def tls_server(
    repo: Path, log: Path, pki: Pki, ready: ssl.SSLContext, *args: str
) -> Iterator[Server]:
    with stopped_at_exit(spawn_server(repo, log, *pki.args(), *args)) as server:
        deadline = time.monotonic() + 60
        while not https_ready(server, ready):
            if not server.alive():
                raise RuntimeError(f"modelport exited early:\n{server.log_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready over https:\n{server.log_text()}")
            time.sleep(0.1)
        yield server


def handshake(
    port: int,
    context: ssl.SSLContext,
    server_hostname: str = "localhost",
    request: bytes | None = None,
    session: ssl.SSLSession | None = None,
) -> tuple[ssl.SSLSocket, bytes]:
    """A TLS connection (the caller closes it) and, if `request` is given, the first bytes of
    the answer. Python sends SNI for "localhost" but none for an IP address."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        connection = context.wrap_socket(raw, server_hostname=server_hostname, session=session)
    except BaseException:
        raw.close()
        raise
    answer = b""
    if request is not None:
        connection.sendall(request)
        answer = connection.recv(4096)
    return connection, answer


def handshake_error(
    port: int,
    context: ssl.SSLContext,
    request: bytes | None = None,
    session: ssl.SSLSession | None = None,
) -> ssl.SSLError | None:
    """What refused the connection, or None if it was served."""
    try:
        connection, _ = handshake(port, context, request=request, session=session)
    except ssl.SSLError as exc:
        return exc
    connection.close()
    return None


def served_certificate(port: int, server_hostname: str, context: ssl.SSLContext) -> bytes:
    connection, _ = handshake(port, context, server_hostname)
    with connection:
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def repository(root: Path) -> Path:
    repo = root / "repo"
    add_model(repo, "add_sub", onnx_models.add_sub("FP32", 4))
    add_model(repo, "mlp", onnx_models.mlp((8, 16, 3), seed=3))
    return repo


def grpc_live(channel: grpc.Channel) -> bool:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    reply = stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10)
    return bool(reply.live)


def grpc_status(server: Server, credentials: grpc.ChannelCredentials) -> grpc.StatusCode:
    """ServerLive's status over a new channel."""
    with grpc.secure_channel(server.grpc_url, credentials) as channel:
        try:
            assert grpc_live(channel)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def grpc_credentials(
    ca: trustme.CA, client: trustme.LeafCert | None = None
) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes(),
        private_key=client.private_key_pem.bytes(),
        certificate_chain=client.cert_chain_pems[0].bytes(),
    )


LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n"
ADD_SUB_BODY = {
    "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]},
    ]
}


# -- TLS, no client certificates -------------------------------------------------------------


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


# -- mTLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, Pki, trustme.LeafCert]]:
    root = tmp_path_factory.mktemp("mtls")
    client_ca = trustme.CA()
    client = client_ca.issue_cert("client@example.com")
    pki = issue(root / "pki", trustme.CA(), client_ca)
    ready = trusting(pki.server_ca, client)
    with tls_server(repository(root), root / "server.log", pki, ready) as server:
        yield server, pki, client


def test_mtls_refuses_clients_without_a_certificate(
    mtls: tuple[Server, Pki, trustme.LeafCert],
) -> None:
    server, pki, _ = mtls
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base(server)}/v2/health/live", verify=trusting(pki.server_ca), timeout=10)
    # TLS 1.3 finishes the client's side of the handshake first: the server then hangs up
    connection, answer = handshake(server.http_port, trusting(pki.server_ca), request=LIVE)
    connection.close()
    assert answer == b""
    assert grpc_status(server, grpc_credentials(pki.server_ca)) == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_certificates_from_another_ca(
    mtls: tuple[Server, Pki, trustme.LeafCert],
) -> None:
    server, pki, _ = mtls
    stranger = trustme.CA().issue_cert("stranger@example.com")
    with pytest.raises(httpx.TransportError):
        context = trusting(pki.server_ca, stranger)
        httpx.get(f"{base(server)}/v2/health/live", verify=context, timeout=10)
    refused = grpc_status(server, grpc_credentials(pki.server_ca, stranger))
    assert refused == grpc.StatusCode.UNAVAILABLE


def test_mtls_serves_a_certificate_from_the_client_ca(
    mtls: tuple[Server, Pki, trustme.LeafCert], tmp_path: Path
) -> None:
    server, pki, client = mtls
    context = trusting(pki.server_ca, client)
    with httpx.Client(base_url=base(server), verify=context, timeout=10) as http:
        assert http.post("/v2/models/add_sub/infer", json=ADD_SUB_BODY).status_code == 200
    assert grpc_status(server, grpc_credentials(pki.server_ca, client)) == grpc.StatusCode.OK
    triton = triton_grpc.InferenceServerClient(
        server.grpc_url,
        ssl=True,
        root_certificates=pem_file(tmp_path, "ca.pem", pki.server_ca.cert_pem),
        private_key=pem_file(tmp_path, "client.key", client.private_key_pem),
        certificate_chain=pem_file(tmp_path, "client.pem", client.cert_chain_pems[0]),
    )
    try:
        assert triton.is_model_ready("mlp")
    finally:
        triton.close()
    triton_https = triton_http.InferenceServerClient(
        server.url,
        ssl=True,
        ssl_options={
            "ca_certs": pem_file(tmp_path, "ca.pem", pki.server_ca.cert_pem),
            "certfile": pem_file(tmp_path, "client.pem", client.cert_chain_pems[0]),
            "keyfile": pem_file(tmp_path, "client.key", client.private_key_pem),
        },
    )
    try:
        assert triton_https.is_model_ready("mlp")
    finally:
        triton_https.close()


# -- reload on SIGHUP -------------------------------------------------------------------------


def reloads_logged(server: Server) -> int:
    return server.log_text().count("TLS certificates reloaded")


def test_sighup_reloads_certificates_and_client_ca_keeping_open_connections(
    tmp_path: Path,
) -> None:
    old_client_ca, new_client_ca = trustme.CA(), trustme.CA()
    old_client = old_client_ca.issue_cert("old@example.com")
    new_client = new_client_ca.issue_cert("new@example.com")
    old = issue(tmp_path / "pki", trustme.CA(), old_client_ca)
    old_context = trusting(old.server_ca, old_client)
    log = tmp_path / "server.log"
    with tls_server(repository(tmp_path), log, old, old_context) as server:
        # a broken file: the old certificate stays, and the server with it
        old.cert.write_text("not a certificate\n")
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "TLS reload failed" in server.log_text(), "the failed reload logged")
        assert str(old.cert) in server.log_text().split("TLS reload failed")[1].splitlines()[0]
        assert server.alive()
        assert served_certificate(server.http_port, "localhost", old_context) == der(old.leaf)
        assert https_ready(server, old_context)

        # a TLS session from before the reload, which a client could try to resume
        connection, answer = handshake(server.http_port, old_context, request=LIVE)
        assert answer.startswith(b"HTTP/1.1 200")
        session = connection.session
        connection.close()

        # connections opened before the reload
        http = httpx.Client(base_url=base(server), verify=old_context, timeout=10)
        channel = grpc.secure_channel(server.grpc_url, grpc_credentials(old.server_ca, old_client))
        try:
            before = http.get("/v2/health/live")
            assert before.status_code == 200
            assert grpc_live(channel)

            new = issue(tmp_path / "pki", trustme.CA(), new_client_ca)
            server.process.send_signal(signal.SIGHUP)
            wait_until(
                lambda: reloads_logged(server) == 1,
                "the reload logged",
            )
            # within uvicorn's 5 s keep-alive: the same connection, which cannot be a new one
            # (a new handshake would fail: this client trusts only the old server CA)
            after = http.get("/v2/health/live")
            assert after.status_code == 200
            assert client_port(after) == client_port(before)
            assert grpc_live(channel)
        finally:
            http.close()
            channel.close()

        # not resumed (which would skip checking the client against the new client CA): a full
        # handshake, which this client, trusting the old server CA only, cannot complete
        refused = handshake_error(server.http_port, old_context, LIVE, session=session)
        assert isinstance(refused, ssl.SSLCertVerificationError)

        new_context = trusting(new.server_ca, new_client)
        for port in (server.http_port, server.grpc_port):
            for name in ("localhost", "127.0.0.1"):  # with SNI and without
                assert served_certificate(port, name, new_context) == der(new.leaf)
            refused = handshake_error(port, trusting(old.server_ca, new_client))
            assert isinstance(refused, ssl.SSLCertVerificationError)
        # the old client CA is no longer trusted, the new one is
        assert https_ready(server, new_context)
        assert not https_ready(server, trusting(new.server_ca, old_client))
        served = grpc_status(server, grpc_credentials(new.server_ca, new_client))
        assert served == grpc.StatusCode.OK
        grpc_refused = grpc_status(server, grpc_credentials(new.server_ca, old_client))
        assert grpc_refused == grpc.StatusCode.UNAVAILABLE
        if CURL is not None:  # curl sends no SNI to an IP address
            ca = pem_file(tmp_path, "new-ca.pem", new.server_ca.cert_pem)
            cert = pem_file(tmp_path, "new-client.pem", new_client.private_key_and_cert_chain_pem)
            done = subprocess.run(
                [
                    str(CURL),
                    "-sS",
                    "--cacert",
                    ca,
                    "--cert",
                    cert,
                    f"{base(server)}/v2/health/live",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 0, done.stderr
        assert server.alive()


def client_port(reply: httpx.Response) -> int:
    """The local port of the connection that carried `reply`."""
    stream = reply.extensions["network_stream"]
    return int(stream.get_extra_info("client_addr")[1])


# -- several workers ----------------------------------------------------------------------------


def test_workers_serve_tls_and_each_reloads_on_sighup(tmp_path: Path) -> None:
    old = issue(tmp_path / "pki", trustme.CA())
    log = tmp_path / "server.log"
    with tls_server(
        repository(tmp_path), log, old, trusting(old.server_ca), "--workers", "2"
    ) as server:
        wait_until(
            lambda: server.log_text().count("Application startup complete") == 2,
            "both workers started",
        )
        assert grpc_status(server, grpc_credentials(old.server_ca)) == grpc.StatusCode.OK
        new = issue(tmp_path / "pki", trustme.CA())
        server.process.send_signal(signal.SIGHUP)  # to the supervisor, which tells each worker
        wait_until(
            lambda: reloads_logged(server) == 2,
            "both workers' reloads logged",
        )
        new_context = trusting(new.server_ca)
        for _ in range(8):  # new connections, whichever worker accepts them
            assert served_certificate(server.http_port, "localhost", new_context) == der(new.leaf)
            assert served_certificate(server.grpc_port, "localhost", new_context) == der(new.leaf)
        assert https_ready(server, new_context)
        assert server.alive()


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


def test_sighup_while_workers_start_does_not_end_them(tmp_path: Path) -> None:
    pki = issue(tmp_path / "pki", trustme.CA())
    args = (*pki.args(), "--workers", "2")
    with stopped_at_exit(
        spawn_server(repository(tmp_path), tmp_path / "server.log", *args)
    ) as server:
        wait_until(lambda: "2 workers serving" in server.log_text(), "the workers spawned")
        deadline = time.monotonic() + 60
        # the supervisor passes each SIGHUP on to workers still importing and loading
        while server.log_text().count("Application startup complete") < 2:
            assert server.alive(), server.log_text()
            assert time.monotonic() < deadline, server.log_text()
            server.process.send_signal(signal.SIGHUP)
            time.sleep(0.05)
        assert "exited with" not in server.log_text()
        assert https_ready(server, trusting(pki.server_ca))


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
