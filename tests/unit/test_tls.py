"""security/tls.py: the settings that go together, errors that name the flag and the file, the
contexts kept when a reload fails."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from modelport.security.tls import (
    ALPN_GRPC,
    ServerTls,
    TlsError,
    TlsFiles,
    server_context,
)
from modelport.settings import ServerSettings


@pytest.fixture
def files(tmp_path: Path) -> TlsFiles:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "clients.pem"))
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    return TlsFiles(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "clients.pem")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"tls_cert": "c.pem"}, "--tls-cert and --tls-key go together"),
        ({"tls_key": "k.pem"}, "--tls-cert and --tls-key go together"),
        ({"tls_client_ca": "ca.pem"}, "--tls-client-ca needs --tls-cert and --tls-key"),
    ],
)
def test_settings_refuse_incomplete_tls(given: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ServerSettings(**given)


def test_settings_hand_over_the_files() -> None:
    assert ServerSettings().tls_files() is None
    settings = ServerSettings(tls_cert=Path("c.pem"), tls_key=Path("k.pem"))
    assert settings.tls_files() == TlsFiles(Path("c.pem"), Path("k.pem"), None)


def write_broken(path: Path, what: str) -> Path:
    path.write_text(what)
    return path


def test_each_bad_file_is_named_with_its_flag(files: TlsFiles, tmp_path: Path) -> None:
    garbage = write_broken(tmp_path / "garbage.pem", "not PEM at all\n")
    other_key = tmp_path / "other.key"
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(str(other_key))
    missing = tmp_path / "missing.pem"
    cases = [
        (TlsFiles(missing, files.key), f"--tls-cert {missing}: no such file"),
        (TlsFiles(files.cert, missing), f"--tls-key {missing}: no such file"),
        (TlsFiles(garbage, files.key), f"--tls-cert {garbage}: no PEM certificate"),
        (TlsFiles(files.key, files.key), f"--tls-cert {files.key}: no PEM certificate"),
        (TlsFiles(files.cert, garbage), f"--tls-key {garbage}: no PEM private key"),
        (TlsFiles(files.cert, other_key), f"--tls-key {other_key}: is not the private key"),
        (TlsFiles(files.cert, files.key, garbage), f"--tls-client-ca {garbage}: no PEM"),
        (TlsFiles(files.cert, files.key, missing), f"--tls-client-ca {missing}: no such file"),
        (TlsFiles(tmp_path, files.key), f"--tls-cert {tmp_path}: cannot be read"),
    ]
    for given, message in cases:
        with pytest.raises(TlsError) as refused:
            server_context(given, ALPN_GRPC)
        assert str(refused.value).startswith(message), (given, str(refused.value))


def test_an_encrypted_key_is_refused_without_prompting(files: TlsFiles, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TlsError, match="is encrypted; give the key without a passphrase"):
        server_context(TlsFiles(files.cert, encrypted), ALPN_GRPC)


def test_contexts_require_tls_1_2_and_client_certificates_with_a_client_ca(
    files: TlsFiles,
) -> None:
    plain = server_context(TlsFiles(files.cert, files.key), ALPN_GRPC)
    assert plain.minimum_version == ssl.TLSVersion.TLSv1_2
    assert plain.verify_mode == ssl.CERT_NONE
    mutual = server_context(files, ALPN_GRPC)
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    assert mutual.num_tickets == 0


def test_a_failed_reload_keeps_the_contexts_and_logs_the_file(
    files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    tls = ServerTls(files)
    first = tls.http.listener
    assert tls.reload()
    replaced = tls.http.latest
    assert replaced is not first
    write_broken(files.cert, "broken\n")
    with caplog.at_level(logging.ERROR, logger="modelport.security"):
        assert not tls.reload()
    assert tls.http.latest is replaced
    assert f"--tls-cert {files.cert}" in caplog.text
    assert "BEGIN" not in caplog.text  # no key material in the log
