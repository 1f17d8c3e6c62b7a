"""A model's admission limits: `rate_limit` (a token bucket) and `max_in_flight` (a counter).

One `Admission` per model name, shared by all its versions: a limit protects what the model's
owner configured (one config.yaml per model), and a canary or a reload must not open a second
allowance. The data plane calls `enter()` before a request is decoded and `leave()` once the
model's answer is back, whatever happened in between. A reload with another config calls
`configure` on the same object, so requests already in flight keep counting against the new cap.
"""

from __future__ import annotations

import sys
from typing import Literal, Protocol

from modelport.core.errors import RateLimited
from modelport.core.limits import RateLimit, TokenBucket

Limit = Literal["rate_limit", "max_in_flight"]

IN_FLIGHT_RETRY_AFTER_S = 1.0
"""Retry-After for a request refused by max_in_flight. Slots free up as soon as a request ends,
which we cannot predict; HTTP's Retry-After counts whole seconds, so 1 s is the shortest hint
it can carry."""

_UNLIMITED = sys.maxsize


class LimitRecorder(Protocol):
    """Counts a model's refusals by the limit that refused them (observability implements it)."""

    def refused(self, limit: Limit) -> None: ...


class _Unrecorded:
    def refused(self, limit: Limit) -> None:
        pass


class Admission:
    """Unlimited until configured; `enter` then costs two comparisons and an increment."""

    __slots__ = ("_bucket", "_cap", "_recorder", "_what", "in_flight")

    def __init__(self, recorder: LimitRecorder | None = None) -> None:
        self._recorder: LimitRecorder = recorder or _Unrecorded()
        self._bucket: TokenBucket | None = None
        self._cap = _UNLIMITED
        self._what = "the model"
        self.in_flight = 0

    @property
    def rate_limit(self) -> RateLimit | None:
        return None if self._bucket is None else self._bucket.limit

    @property
    def max_in_flight(self) -> int | None:
        return None if self._cap == _UNLIMITED else self._cap

    def configure(
        self, model: str, rate_limit: RateLimit | None, max_in_flight: int | None
    ) -> None:
        """Apply a model's (new) limits. An unchanged rate limit keeps its bucket, so syncing the
        same config again grants no fresh burst."""
        self._what = f"model '{model}'"
        if rate_limit != self.rate_limit:
            self._bucket = None if rate_limit is None else TokenBucket(rate_limit)
        self._cap = _UNLIMITED if max_in_flight is None else max_in_flight

    def enter(self) -> None:
        """Admit one request or raise RateLimited. The cap is checked first, so a request it
        refuses spends no token."""
        if self.in_flight >= self._cap:
            self._recorder.refused("max_in_flight")
            raise RateLimited(
                f"{self._what} has {self.in_flight} requests in flight, its max_in_flight; "
                f"retry in {IN_FLIGHT_RETRY_AFTER_S:g} s",
                retry_after=IN_FLIGHT_RETRY_AFTER_S,
            )
        bucket = self._bucket
        if bucket is not None:
            try:
                bucket.take(self._what)
            except RateLimited:
                self._recorder.refused("rate_limit")
                raise
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
