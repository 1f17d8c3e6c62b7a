"""What every REST route answers an exception with: its status and an `{"error": ...}` body."""

from __future__ import annotations

import logging

import orjson

from modelport.core.errors import ModelportError
from modelport.frontends.status import http_status

log = logging.getLogger("modelport.rest")


def error_json(message: str) -> bytes:
    return orjson.dumps({"error": message})


def error_answer(exc: Exception, method: str, path: str) -> tuple[int, bytes]:
    """A ModelportError's status and message; anything else is logged and answers 500."""
    if isinstance(exc, ModelportError):
        return http_status(exc.kind), error_json(exc.message)
    log.error("unexpected error on %s %s", method, path, exc_info=exc)
    return 500, error_json(f"internal error: {type(exc).__name__}")
