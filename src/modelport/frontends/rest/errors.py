"""What every REST route answers an exception with: its status and an `{"error": ...}` body."""

from __future__ import annotations

import logging
import math

import orjson

from modelport.core.errors import ModelportError, RateLimited, public_error
from modelport.frontends.status import http_status

log = logging.getLogger("modelport.rest")

Headers = list[tuple[bytes, bytes]]
_NO_HEADERS: Headers = []


def error_json(message: str) -> bytes:
    return orjson.dumps({"error": message})


def error_answer(exc: Exception, method: str, path: str) -> tuple[int, bytes]:
    """A ModelportError's status and message; anything else is logged and answers 500."""
    if not isinstance(exc, ModelportError):
        log.error("unexpected error on %s %s", method, path, exc_info=exc)
    error = public_error(exc)
    return http_status(error.kind), error_json(error.message)


def error_headers(exc: Exception) -> Headers:
    """Headers an error answer carries besides its content type: `Retry-After` (whole seconds,
    at least 1) on a 429. Never mutate the list returned: it is shared when empty."""
    if isinstance(exc, RateLimited):
        return [(b"retry-after", str(retry_after_seconds(exc.retry_after)).encode())]
    return _NO_HEADERS


def retry_after_seconds(seconds: float) -> int:
    """HTTP's Retry-After counts whole seconds: rounded up, so a client that waits that long
    finds the token or the slot there, and never 0, which would invite an immediate retry."""
    return max(1, math.ceil(seconds))
