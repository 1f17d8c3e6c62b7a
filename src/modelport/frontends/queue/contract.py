"""What a queue request and its reply carry, the same on every broker (README, "Serving from a
message queue"); each transport maps these fields to its own message format."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from modelport.core.errors import ErrorKind

REQUESTS = "modelport.requests"
REPLIES = "modelport.replies"
DEAD = "modelport.dead"
GROUP = "modelport"
MAX_IN_FLIGHT = 64
MAX_ATTEMPTS = 5
VISIBILITY_TIMEOUT_S = 30.0

TRANSIENT = frozenset(
    {ErrorKind.UNAVAILABLE, ErrorKind.TIMEOUT, ErrorKind.INTERNAL, ErrorKind.RATE_LIMITED}
)
"""Failures worth another attempt (model loading, queue full, timeout, an internal error, a
model's rate_limit or max_in_flight); every other kind is the client's (the REST 4xx answers)
and is answered at once."""


@dataclass(frozen=True, slots=True)
class QueueRequest:
    """One request as it came off the broker (before its body is decoded)."""

    body: bytes
    message_id: str
    """The broker's id for the message: the request id when the message names none."""
    model: str | None = None
    version: str | None = None
    request_id: str | None = None
    reply_to: str | None = None
    content_type: str | None = None
    header_length: str | None = None
    """`inference_header_content_length` as the message carries it (text): the binary
    extension's JSON header length."""
    traceparent: str | None = None

    @property
    def id(self) -> str:
        return self.request_id or self.message_id


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to one request: the v2 response body with status "200", or the v2 error
    object with the status the REST API would have answered."""

    request_id: str
    model: str
    version: str
    status: int
    body: bytes
    header_length: int | None = None
    """Set when the body carries binary outputs after its JSON header."""

    @classmethod
    def error(cls, request_id: str, model: str, version: str, status: int, message: str) -> Reply:
        """The v2 error object `{"error": message}` with the status REST would answer."""
        return cls(request_id, model, version, status, orjson.dumps({"error": message}))

    @property
    def content_type(self) -> str:
        return "application/octet-stream" if self.header_length is not None else "application/json"
