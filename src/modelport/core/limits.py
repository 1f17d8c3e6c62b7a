"""Rate limits: a token bucket per model (config.yaml `rate_limit`) and per API key.

A bucket holds up to `burst` tokens and gains `requests_per_second` of them each second; a
request takes one or is refused with the time until one is there (HTTP Retry-After).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from modelport.core.errors import RateLimited


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests_per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not self.requests_per_second > 0:
            raise ValueError(
                f"rate_limit.requests_per_second must be > 0, not {self.requests_per_second}"
            )
        if self.burst < 1:
            raise ValueError(f"rate_limit.burst must be at least 1, not {self.burst}")


class TokenBucket:
    __slots__ = ("_clock", "_stamp", "_tokens", "limit")

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._tokens = float(limit.burst)
        self._stamp = clock()

    def try_take(self) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there will be."""
        now = self._clock()
        limit = self.limit
        tokens = min(
            float(limit.burst), self._tokens + (now - self._stamp) * limit.requests_per_second
        )
        self._stamp = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / limit.requests_per_second

    def take(self, what: str) -> None:
        """Take a token or raise RateLimited naming `what` ("model 'fraud'", "API key 'ci'")."""
        wait = self.try_take()
        if wait > 0.0:
            limit = self.limit
            raise RateLimited(
                f"{what} is over its rate limit of {limit.requests_per_second:g} requests per "
                f"second (burst {limit.burst}); retry in {wait:.3f} s",
                retry_after=wait,
            )
