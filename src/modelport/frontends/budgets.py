"""What both ports share, so that slow, idle or hostile clients cannot exhaust the process.

- `ConnectionCap`: open connections per port. Each port gets its own cap below the process's
  descriptor limit, so a flood of sockets on one port leaves room for the other (and for model
  files, logs and broker connections). A connection past the cap is answered politely and closed.
- `ByteBudget`: bytes of requests still arriving over every connection of both ports (HTTP/1.1
  bodies and gRPC messages not yet complete), and, as a second instance, gRPC answers waiting for
  a peer's flow-control window. A request that would go over it is refused (503 / UNAVAILABLE);
  nothing waits for room, so nothing queues without bound.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

DESCRIPTORS_KEPT = 256
"""Descriptors no port may use: model files, logs, broker and webhook connections."""
MOST_CONNECTIONS_PER_PORT = 10_000


@dataclass(slots=True)
class ConnectionCap:
    limit: int
    open: int = 0
    refused: int = 0

    def admit(self) -> bool:
        """One more connection, if the cap allows it (then `release` it when it closes)."""
        if self.open >= self.limit:
            self.refused += 1
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


@dataclass(slots=True)
class ByteBudget:
    limit: int
    held: int = 0

    def take(self, size: int) -> bool:
        """Hold `size` more bytes if they fit (then `give` them back when released)."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


def raise_descriptor_limit() -> int:
    """Raise this process's open-file limit to its hard limit; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return hard if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft
    return hard


def connections_per_port(descriptors: int, ports: int = 2) -> int:
    """The default cap per port: an equal share of the descriptors not kept aside."""
    share = (descriptors - DESCRIPTORS_KEPT) // ports
    return max(16, min(MOST_CONNECTIONS_PER_PORT, share))


@dataclass(slots=True, frozen=True)
class Budgets:
    """The limits one server process's ports share: built once (app.py) and handed to both."""

    pending: ByteBudget
    """Bytes of requests still arriving, over every connection of both ports."""
    http: ConnectionCap
    grpc: ConnectionCap

    @classmethod
    def create(cls, max_connections: int | None, pending_limit: int) -> Budgets:
        """`max_connections` per port (None: an equal share of the descriptor limit, which is
        raised to its hard limit either way); `pending_limit` bytes for both ports together."""
        descriptors = raise_descriptor_limit()
        per_port = connections_per_port(descriptors) if max_connections is None else max_connections
        return cls(ByteBudget(pending_limit), ConnectionCap(per_port), ConnectionCap(per_port))
