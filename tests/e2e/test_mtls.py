"""mTLS on both ports (--tls-client-ca): no client certificate, or one from another CA, is
refused in the handshake; one from the client CA is served (httpx, grpcio, tritonclient)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import trustme

from tests.e2e.tls_support import (
    ADD_SUB_BODY,
    LIVE,
    Pki,
    base,
    grpc_credentials,
    grpc_status,
    handshake,
    issue,
    pem_file,
    repository,
    tls_server,
    trusting,
)
from tests.support import Server

pytestmark = pytest.mark.e2e


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
