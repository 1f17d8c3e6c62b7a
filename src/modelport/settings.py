"""Server settings: command-line flags, or MODELPORT_* environment variables."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from modelport.frontends.queue.endpoint import EndpointError, QueueEndpoint, parse_endpoints
from modelport.security.exposure import open_server_refusal
from modelport.security.keys import KeyFileError, read_key_file
from modelport.security.tls import TlsFiles

EXAMPLE_REPOSITORY = Path(__file__).parent / "examples" / "repository"


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELPORT_", extra="forbid")

    model_repository: Path | None = None
    host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_tensor_elements: int = Field(default=1 << 26, ge=1)
    strict_readiness: bool = False
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    """json: one JSON object per log line (observability/logging.py)."""
    access_log: bool = True
    """One line per request on the `modelport.access` logger."""
    trace_sample_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of requests traced with OpenTelemetry (0: tracing off, not even imported)."""
    otlp_endpoint: str | None = None
    """Where traces go (OTLP over HTTP/protobuf); None: the exporter's default."""
    model_control_mode: Literal["none", "poll", "explicit"] = "none"
    repository_poll_secs: float = Field(default=5.0, gt=0, le=3600)
    load_model: tuple[str, ...] = ()
    """Models to load at start in explicit mode ("*" for all); other modes load everything."""
    workers: int = Field(default=1, ge=1, le=64)
    """Server processes sharing the ports, each with its own copy of the models (serving.py)."""
    queue: Annotated[tuple[str, ...], NoDecode] = ()
    """Message queues to serve (--queue, repeatable; MODELPORT_QUEUE is comma-separated)."""
    api_keys: Path | None = None
    """The API key file (--api-keys, MODELPORT_API_KEYS), read again when it changes."""
    api_key: SecretStr | None = None
    """One key with every scope, from MODELPORT_API_KEY only: no flag, whose value `ps` shows."""
    allow_unauthenticated: bool = False
    """Serve a non-loopback address without keys (e.g. behind an authenticating gateway)."""
    protect_health: bool = False
    """Health endpoints need a valid key too (they are open by default, for probes)."""
    tls_cert: Path | None = None
    """PEM certificate (chain) for both ports; with tls_key, both serve TLS only."""
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    """PEM CA certificates: clients must then present a certificate signed by one (mTLS)."""
    alert_webhook: Annotated[tuple[str, ...], NoDecode] = ()
    """URLs that get SLO alerts in Alertmanager's webhook format (--alert-webhook, repeatable;
    MODELPORT_ALERT_WEBHOOK is comma-separated)."""
    slo_interval: float = Field(default=5.0, gt=0, le=300)
    """Seconds between evaluations of the models' SLOs (--slo-interval)."""
    max_connections: int | None = Field(default=None, ge=1)
    """Open connections per port; past it a client is refused politely. None: an equal share
    of the process's descriptor limit, at most 10,000 (frontends/budgets.py)."""
    max_pending_bytes: int | None = Field(default=None, ge=1024)
    """Bytes of requests still arriving, over all connections of both ports (and, separately,
    of gRPC answers waiting for a client's window). None: 4x max_request_bytes, at least 256 MiB."""
    header_timeout: float = Field(default=10.0, gt=0, le=300)
    """Seconds a client has to send a request's headers (HTTP/1.1), or its TLS handshake and the
    HTTP/2 preface and SETTINGS."""
    stall_timeout: float = Field(default=10.0, gt=0, le=600)
    """Seconds a request body, an HTTP/2 frame or a gRPC message may stall half sent."""
    idle_timeout: float = Field(default=300.0, gt=0, le=86400)
    """Seconds an HTTP/2 connection may stay open with no call in progress (then GOAWAY)."""

    def pending_bytes_limit(self) -> int:
        if self.max_pending_bytes is not None:
            return self.max_pending_bytes
        return max(256 << 20, 4 * self.max_request_bytes)

    @field_validator("queue", mode="before")
    @classmethod
    def _split_queues(cls, value: object) -> object:
        return tuple(value.split(",")) if isinstance(value, str) else value

    @field_validator("queue")
    @classmethod
    def _queues_usable(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            parse_endpoints(value)
        except EndpointError as exc:
            raise ValueError(str(exc)) from None
        return value

    def queue_endpoints(self) -> tuple[QueueEndpoint, ...]:
        return parse_endpoints(self.queue)

    @field_validator("alert_webhook", mode="before")
    @classmethod
    def _split_webhooks(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(url.strip() for url in value.split(",") if url.strip())
        return value

    @field_validator("alert_webhook")
    @classmethod
    def _webhooks_usable(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:  # not echoed: a webhook URL may hold a token
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("--alert-webhook takes an http:// or https:// URL with a host")
        return urls

    def external_url(self) -> str:
        """This server's base URL, as alert notifications link back to it."""
        scheme = "https" if self.tls_cert is not None else "http"
        host = socket.gethostname() if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.http_port}"

    @model_validator(mode="after")
    def _one_process_for_explicit_control(self) -> ServerSettings:
        if self.workers > 1 and self.model_control_mode == "explicit":
            raise ValueError(
                "--model-control-mode explicit needs --workers 1: a load or unload request "
                "reaches one worker only; use poll mode to change models under several workers"
            )
        return self

    def startup_models(self) -> tuple[str, ...]:
        if self.model_control_mode != "explicit":
            return ("*",)
        return self.load_model

    @property
    def repository(self) -> Path:
        return self.model_repository or EXAMPLE_REPOSITORY

    @property
    def uses_examples(self) -> bool:
        return self.model_repository is None

    @model_validator(mode="after")
    def _tls_files_together(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return self

    def tls_files(self) -> TlsFiles | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        return TlsFiles(self.tls_cert, self.tls_key, self.tls_client_ca)

    @field_validator("api_keys")
    @classmethod
    def _key_file_valid(cls, path: Path | None) -> Path | None:
        if path is not None:
            try:
                read_key_file(path)
            except KeyFileError as exc:
                raise ValueError(str(exc)) from None
        return path

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"--otlp-endpoint needs an http:// or https:// URL, not {value!r}")
        return value

    @model_validator(mode="after")
    def _tracing_installed(self) -> ServerSettings:
        if (self.trace_sample_ratio > 0 or self.otlp_endpoint) and not _tracing_available():
            raise ValueError(
                "tracing (--trace-sample-ratio, --otlp-endpoint) needs OpenTelemetry, which is "
                "not installed: pip install 'modelport[tracing]'"
            )
        return self

    @model_validator(mode="after")
    def _keys_unless_loopback(self) -> ServerSettings:
        if not self.keys_configured and not self.allow_unauthenticated:
            refusal = open_server_refusal(self.host)
            if refusal is not None:
                raise ValueError(refusal)
        return self

    @property
    def keys_configured(self) -> bool:
        return self.api_keys is not None or bool(self.env_api_key())

    def env_api_key(self) -> str | None:
        return None if self.api_key is None else self.api_key.get_secret_value() or None


def _tracing_available() -> bool:
    """The `tracing` extra: OpenTelemetry's SDK and its OTLP/HTTP exporter."""
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http")
        )
    except ModuleNotFoundError:  # a parent package is missing
        return False
