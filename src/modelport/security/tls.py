"""TLS on both ports: the server's SSL contexts, and their reload for new handshakes.

A listener keeps the SSLContext it was created with (uvicorn and asyncio capture it), so a
reload cannot hand it a new one. Instead that first context's SNI callback, which OpenSSL runs
for every handshake (with `None` as the name when the client sends none, as curl does for an
IP address), moves the handshake to the latest context. Connections already open keep the
context they were made with. Replacing contexts rather than loading files into the live one is
what makes a removed client CA stop being trusted: `load_verify_locations` only ever adds.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("modelport.security")

ALPN_HTTP = "http/1.1"  # uvicorn's httptools protocol speaks HTTP/1.1 only
ALPN_GRPC = "h2"
PEM_CERTIFICATE_START = "-----BEGIN CERTIFICATE-----"
PEM_CERTIFICATE_END = "-----END CERTIFICATE-----"


class TlsError(Exception):
    """A certificate, key or CA file that is missing or does not load; the message names the
    flag and the file."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None


def server_context(files: TlsFiles, alpn: str) -> ssl.SSLContext:
    """A server context from `files`: TLS 1.2 or newer, the ssl module's default ciphers, no
    compression, `alpn` as the one protocol offered; with a client CA, client certificates
    signed by it are required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols([alpn])
    _load_chain(context, files.cert, files.key)
    if files.client_ca is not None:
        _load_client_ca(context, files.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
        # No session resumption: a session made before a reload would let its client back in
        # without its certificate being checked against the client CA that is current now.
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
    return context


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    _check_readable(cert, "--tls-cert")
    _check_readable(key, "--tls-key")
    try:
        ssl.create_default_context(cafile=cert)  # parses every certificate in the file
    except ssl.SSLError as exc:
        raise TlsError(
            f"--tls-cert {cert}: no PEM certificate could be read: {_reason(exc)}"
        ) from None
    except OSError as exc:  # replaced or removed since the check above
        raise TlsError(f"--tls-cert {cert}: cannot be read: {exc.strerror}") from None
    try:
        context.load_cert_chain(cert, key, password=_refuse_passphrase(key))
    except ssl.SSLError as exc:
        if exc.reason is None:  # OpenSSL found no key in the file ("PEM lib")
            raise TlsError(f"--tls-key {key}: no PEM private key could be read") from None
        raise TlsError(
            f"--tls-key {key}: is not the private key of --tls-cert {cert}: {exc.reason}"
        ) from None
    except OSError as exc:
        raise TlsError(f"--tls-key {key}: cannot be read: {exc.strerror}") from None


def _load_client_ca(context: ssl.SSLContext, client_ca: Path) -> None:
    _check_readable(client_ca, "--tls-client-ca")
    try:
        context.load_verify_locations(cafile=client_ca)
    except ssl.SSLError as exc:
        raise TlsError(
            f"--tls-client-ca {client_ca}: no PEM certificate could be read: {_reason(exc)}"
        ) from None
    except OSError as exc:
        raise TlsError(f"--tls-client-ca {client_ca}: cannot be read: {exc.strerror}") from None


def _check_readable(path: Path, flag: str) -> None:
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise TlsError(f"{flag} {path}: no such file") from None
    except OSError as exc:
        raise TlsError(f"{flag} {path}: cannot be read: {exc.strerror}") from None


def _refuse_passphrase(key: Path) -> Callable[[], str]:
    """Without a password callback OpenSSL would prompt on the terminal for an encrypted key."""

    def refuse() -> str:
        raise TlsError(f"--tls-key {key}: is encrypted; give the key without a passphrase")

    return refuse


def _reason(exc: ssl.SSLError) -> str:
    return exc.reason or exc.strerror or str(exc)


def certificate_fingerprint(cert: Path) -> str:
    """SHA-256 of the file's first certificate, for the log: which certificate now serves."""
    try:
        text = cert.read_text(errors="replace")
        start = text.index(PEM_CERTIFICATE_START)
        end = text.index(PEM_CERTIFICATE_END, start) + len(PEM_CERTIFICATE_END)
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(text[start:end])).hexdigest()
    except (OSError, ValueError):  # the file changed again since it was loaded
        return "unknown"


class HandoverContext:
    """The context a listener was created with (`listener`), handing every new handshake to
    the latest context given to `replace`."""

    def __init__(self, listener: ssl.SSLContext) -> None:
        self.listener = listener
        self._latest = listener
        listener.sni_callback = self._hand_over

    @property
    def latest(self) -> ssl.SSLContext:
        """The context new handshakes get."""
        return self._latest

    def replace(self, latest: ssl.SSLContext) -> None:
        self._latest = latest

    def _hand_over(
        self, connection: ssl.SSLObject, server_name: str | None, listener: ssl.SSLContext
    ) -> None:
        latest = self._latest
        if latest is not listener:
            connection.context = latest


class ServerTls:
    """The HTTP and gRPC ports' contexts from one set of files. `reload()` reads the files
    again for new handshakes; a reload that fails keeps the certificates in use."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        http, grpc = self._read()
        self.http = HandoverContext(http)
        self.grpc = HandoverContext(grpc)

    def _read(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        return server_context(self.files, ALPN_HTTP), server_context(self.files, ALPN_GRPC)

    def reload(self) -> bool:
        try:
            http, grpc = self._read()
        except TlsError as exc:
            log.error("TLS reload failed; still serving the previous certificates: %s", exc)
            return False
        self.http.replace(http)
        self.grpc.replace(grpc)
        log.info("TLS certificates reloaded: %s", self.describe())
        return True

    def describe(self) -> str:
        """What serves, for the log (file names and the certificate's fingerprint)."""
        files = self.files
        fingerprint = certificate_fingerprint(files.cert)
        client_ca = (
            f"; client certificates required, CA {files.client_ca}" if files.client_ca else ""
        )
        return f"certificate {files.cert} (sha256 {fingerprint}){client_ca}"
