"""Certificates and the client CA reloaded on SIGHUP without dropping open connections, a
failed reload keeping the old ones, and the same with --workers (the supervisor passes the
signal on, also to workers still starting)."""

from __future__ import annotations

import signal
import ssl
import subprocess
import time
from pathlib import Path

import grpc
import httpx
import pytest
import trustme

from tests.e2e.tls_support import (
    CURL,
    LIVE,
    base,
    client_port,
    der,
    grpc_credentials,
    grpc_live,
    grpc_status,
    handshake,
    handshake_error,
    https_ready,
    issue,
    pem_file,
    reloads_logged,
    repository,
    served_certificate,
    stopped_at_exit,
    tls_server,
    trusting,
)
from tests.support import spawn_server, wait_until

pytestmark = pytest.mark.e2e


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
