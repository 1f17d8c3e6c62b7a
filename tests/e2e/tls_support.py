"""What the TLS tests share (test_tls.py, test_mtls.py, test_tls_reload.py): certificates made
with trustme, servers started with them, and clients (ssl, httpx, grpcio) that trust them."""

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
import trustme
from tritonclient.grpc import service_pb2, service_pb2_grpc

from modelport.examples import onnx_models
from tests.support import Server, add_model, spawn_server

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


def reloads_logged(server: Server) -> int:
    return server.log_text().count("TLS certificates reloaded")


def client_port(reply: httpx.Response) -> int:
    """The local port of the connection that carried `reply`."""
    stream = reply.extensions["network_stream"]
    return int(stream.get_extra_info("client_addr")[1])
