"""Access metrics: refused requests by reason and by client address, key-rate-limited requests.

Client addresses come from whoever connects, so their label set is bounded: the first
MAX_CLIENTS distinct addresses get a series each, any later one counts under "other".
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

MAX_CLIENTS = 1000
OTHER = "other"


class AccessMetrics:
    """Implements security.audit.AccessObserver."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.refusals = Counter(
            "modelport_access_refused",
            "Requests refused for their API key, by reason (missing_key, malformed_key, "
            "unknown_key, scope, model).",
            ("reason",),
            registry=registry,
        )
        self.failed_attempts = Counter(
            "modelport_access_failed_attempts",
            f"Requests refused for their API key, by client address (the first {MAX_CLIENTS} "
            f"addresses; later ones count as '{OTHER}').",
            ("client",),
            registry=registry,
        )
        self.key_limited = Counter(
            "modelport_key_rate_limited",
            "Requests refused (429) because their API key was over its rate_limit, by key name.",
            ("key",),
            registry=registry,
        )
        self._clients: set[str] = set()

    def refused(self, reason: str, client: str) -> None:
        self.refusals.labels(reason).inc()
        clients = self._clients
        if client not in clients:
            if len(clients) >= MAX_CLIENTS:
                client = OTHER
            else:
                clients.add(client)
        self.failed_attempts.labels(client).inc()

    def rate_limited(self, key_name: str) -> None:
        self.key_limited.labels(key_name).inc()
