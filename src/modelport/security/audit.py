"""The audit log (logger `modelport.audit`) and what access metrics are told.

Refused keys and management actions are logged with the key's name, never its value. Lines
about refusals are themselves rate limited (someone trying keys in a loop must not be able to
fill the disk); the ones left out are counted in the next line, and metrics count them all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from modelport.core.limits import RateLimit, TokenBucket
from modelport.security.policy import AccessRefusal, KeyForbidden, KeyRateLimited, KeyRefused

log = logging.getLogger("modelport.audit")

REFUSAL_LINES = RateLimit(requests_per_second=20, burst=200)
"""Refusal lines written at most; metrics count every refusal."""
ANONYMOUS = "-"
"""The key name of an action when no keys are configured."""
_WHAT_CAME = {
    "missing": "no API key",
    "malformed": "a malformed Authorization header",
    "unknown": "an unknown API key",
}


class AccessObserver(Protocol):
    """What counts refusals (observability/access_metrics.py implements it)."""

    def refused(self, reason: str, client: str) -> None:
        """`reason`: missing_key, malformed_key, unknown_key, scope or model."""

    def rate_limited(self, key_name: str) -> None: ...


class AuditLog:
    def __init__(
        self, observer: AccessObserver | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._observer = observer
        self._lines = TokenBucket(REFUSAL_LINES, clock)
        self._left_out = 0

    def refused(self, error: AccessRefusal, client: str) -> None:
        observer = self._observer
        if isinstance(error, KeyRateLimited):
            if observer is not None:
                observer.rate_limited(error.key_name)
            return  # not a refused key: the key is fine, its rate is not
        if isinstance(error, KeyRefused):
            reason, line = f"{error.reason}_key", f"{_WHAT_CAME[error.reason]} from {client}"
        else:
            reason, line = error.reason, _forbidden_line(error, client)
        if observer is not None:
            observer.refused(reason, client)
        if self._lines.try_take() > 0.0:
            self._left_out += 1
            return
        if self._left_out:
            line += f" ({self._left_out} refusals since the last line were not logged)"
            self._left_out = 0
        log.warning("refused: %s", line)

    def management(self, action: str, key_name: str, client: str, model: str, outcome: str) -> None:
        log.info(
            "management: %s model '%s' by key '%s' from %s: %s",
            action,
            model,
            key_name,
            client,
            outcome,
        )


def _forbidden_line(error: KeyForbidden, client: str) -> str:
    return f"key '{error.key_name}' from {client}: {error.message}"
