"""What every REST route answers an exception with: its status and an `{"error": ...}` body."""

from __future__ import annotations

import logging

import orjson

from modelport.core.errors import ModelportError, public_error
from modelport.frontends.status import http_status

log = logging.getLogger("modelport.rest")


def error_json(message: str) -> bytes:
    return orjson.dumps({"error": message})


def error_answer(exc: Exception, method: str, path: str) -> tuple[int, bytes]:
    """A ModelportError's status and message; anything else is logged and answers 500."""
    if not isinstance(exc, ModelportError):
        log.error("unexpected error on %s %s", method, path, exc_info=exc)
    error = public_error(exc)
    return http_status(error.kind), error_json(error.message)
