"""The one table from error kinds to HTTP status codes and gRPC status codes."""

from __future__ import annotations

from typing import NamedTuple

from modelport.core.errors import ErrorKind


class WireStatus(NamedTuple):
    http: int
    grpc: str
    """A grpc.StatusCode member name, so this module needs no grpc import."""


STATUS: dict[ErrorKind, WireStatus] = {
    ErrorKind.NOT_FOUND: WireStatus(404, "NOT_FOUND"),
    ErrorKind.INVALID_INPUT: WireStatus(400, "INVALID_ARGUMENT"),
    ErrorKind.UNAUTHENTICATED: WireStatus(401, "UNAUTHENTICATED"),
    ErrorKind.FORBIDDEN: WireStatus(403, "PERMISSION_DENIED"),
    ErrorKind.TOO_LARGE: WireStatus(413, "RESOURCE_EXHAUSTED"),
    ErrorKind.RATE_LIMITED: WireStatus(429, "RESOURCE_EXHAUSTED"),
    ErrorKind.UNAVAILABLE: WireStatus(503, "UNAVAILABLE"),
    ErrorKind.TIMEOUT: WireStatus(504, "DEADLINE_EXCEEDED"),
    ErrorKind.PRECONDITION: WireStatus(400, "FAILED_PRECONDITION"),
    ErrorKind.INTERNAL: WireStatus(500, "INTERNAL"),
}


def http_status(kind: ErrorKind) -> int:
    return STATUS[kind].http


def grpc_code_name(kind: ErrorKind) -> str:
    return STATUS[kind].grpc
