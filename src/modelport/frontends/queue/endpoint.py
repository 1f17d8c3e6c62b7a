"""`--queue URL`: which broker, where, and the names and limits its query parameters override.

    redis://[:password@]host:6379/0?requests=fraud.in&model=fraud
    amqp://user:password@host:5672/vhost?max_in_flight=32
    nats://host:4222?stream=MODELPORT

The scheme picks the broker (redis/rediss, amqp/amqps, nats/tls). modelport's own parameters
are taken out of the URL before it reaches the broker's client; credentials stay in the URL (or
the client's environment) and `safe_url` is what logs and metrics show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from modelport.frontends.queue.contract import (
    DEAD,
    GROUP,
    MAX_ATTEMPTS,
    MAX_IN_FLIGHT,
    REPLIES,
    REQUESTS,
    VISIBILITY_TIMEOUT_S,
)

Broker = Literal["redis", "rabbitmq", "nats"]
_SCHEMES: dict[str, Broker] = {
    "redis": "redis",
    "rediss": "redis",
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "nats": "nats",
    "tls": "nats",
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
_OURS = frozenset(
    {
        "requests",
        "replies",
        "dead",
        "group",
        "model",
        "version",
        "max_in_flight",
        "max_attempts",
        "visibility_timeout",
        "retry_delay",
        "stream",
    }
)


class EndpointError(ValueError):
    """A --queue URL that cannot be used; the message names the problem (never the password)."""


@dataclass(frozen=True, slots=True)
class QueueEndpoint:
    broker: Broker
    url: str
    """The URL for the broker's client, without modelport's parameters."""
    safe_url: str
    """The URL without its credentials, for logs and metrics."""
    requests: str = REQUESTS
    replies: str = REPLIES
    dead: str = DEAD
    group: str = GROUP
    model: str | None = None
    """The model every message of this queue is for (messages then need no model field)."""
    version: str | None = None
    max_in_flight: int = MAX_IN_FLIGHT
    max_attempts: int = MAX_ATTEMPTS
    visibility_timeout: float = VISIBILITY_TIMEOUT_S
    """How long a request may stay unacknowledged before another consumer gets it (Redis: the
    claim; NATS: the consumer's ack_wait; RabbitMQ redelivers when a connection drops)."""
    retry_delay: float = 0.5
    """Seconds before the second attempt; each further attempt waits twice as long (at most 30)."""
    stream: str = "MODELPORT"
    """NATS JetStream: the stream holding the requests."""


def parse_endpoint(text: str) -> QueueEndpoint:
    parts = urlsplit(text.strip())
    broker = _SCHEMES.get(parts.scheme)
    if broker is None:
        raise EndpointError(
            f"--queue {_redact(parts)}: unknown scheme '{parts.scheme}' (expected one of "
            f"{', '.join(sorted(_SCHEMES))})"
        )
    if not parts.hostname:
        raise EndpointError(f"--queue {_redact(parts)}: the URL names no host")
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _OURS:
            ours[key] = value
        else:
            theirs.append((key, value))
    client_url = urlunsplit(parts._replace(query=urlencode(theirs)))
    safe = _redact(parts._replace(query=urlencode(theirs)))
    where = f"--queue {safe}"
    fields: dict[str, object] = {}
    for key in ("requests", "replies", "dead", "group", "model", "version", "stream"):
        if key in ours:
            fields[key] = _name(where, key, ours[key])
    for key, low, high in (("max_in_flight", 1, 4096), ("max_attempts", 1, 100)):
        if key in ours:
            fields[key] = _integer(where, key, ours[key], low, high)
    for key in ("visibility_timeout", "retry_delay"):
        if key in ours:
            fields[key] = _seconds(where, key, ours[key])
    return QueueEndpoint(broker, client_url, safe, **fields)  # type: ignore[arg-type]


def parse_endpoints(values: tuple[str, ...]) -> tuple[QueueEndpoint, ...]:
    """Every --queue (each may be a comma-separated list, as MODELPORT_QUEUE is)."""
    urls = [url for value in values for url in value.split(",") if url.strip()]
    return tuple(parse_endpoint(url) for url in urls)


_SECRET_PARAMETERS = re.compile(r"pass|token|secret|key|cred|auth|nkey|jwt", re.IGNORECASE)


def _redact(parts: SplitResult) -> str:
    """The URL without its secrets: no password, no user part that is alone (a NATS token is
    written `nats://TOKEN@host`), no query parameter that looks like a credential."""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    if parts.username and parts.password is not None:
        host = f"{parts.username}@{host}"
    query = [
        (key, "***" if _SECRET_PARAMETERS.search(key) else value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(netloc=host, query=urlencode(query)))


def _name(where: str, key: str, value: str) -> str:
    if not _NAME.fullmatch(value):
        raise EndpointError(
            f"{where}: {key}={value!r} is not a usable name (letters, digits, '.', '_', ':', '-')"
        )
    return value


def _integer(where: str, key: str, value: str, low: int, high: int) -> int:
    if not value.isdigit() or not low <= int(value) <= high:
        raise EndpointError(f"{where}: {key} must be an integer from {low} to {high}")
    return int(value)


def _seconds(where: str, key: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0.001 <= seconds <= 86_400:
        raise EndpointError(f"{where}: {key} must be seconds from 0.001 to 86400")
    return seconds
