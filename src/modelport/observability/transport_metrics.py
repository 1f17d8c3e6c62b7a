"""Connections and requests a port's transport limits refused, as a counter and a throttled log.

A flood is refused thousands of times a second, so nothing here logs once per refusal: the first
refusal of a port is logged, then at most one summary every LOG_EVERY_SECS.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger("modelport")

LOG_EVERY_SECS = 10.0


class TransportRefusals:
    """One per server process; `for_port("http")` / `for_port("grpc")` give each port's hook."""

    def __init__(
        self, registry: CollectorRegistry, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._counter = Counter(
            "modelport_transport_refused",
            "Connections and requests refused by a transport limit, by port and limit "
            "(connections, pending_bytes, header_timeout, header_bytes, header_count, "
            "body_stall, write_stall, ...).",
            ("port", "limit"),
            registry=registry,
        )
        self._clock = clock
        self._unlogged: dict[str, Tally[str]] = {}
        self._logged_at: dict[str, float] = {}

    def for_port(self, port: str) -> Callable[[str], None]:
        return lambda limit: self.refused(port, limit)

    def refused(self, port: str, limit: str) -> None:
        self._counter.labels(port, limit).inc()
        unlogged = self._unlogged.setdefault(port, Tally())
        unlogged[limit] += 1
        now = self._clock()
        last = self._logged_at.get(port)
        if last is not None and now - last < LOG_EVERY_SECS:
            return
        self._logged_at[port] = now
        summary = ", ".join(f"{name} {count}" for name, count in sorted(unlogged.items()))
        since = "" if last is None else f" in the last {now - last:.0f} s"
        log.warning("%s port refused clients%s by limit: %s", port, since, summary)
        unlogged.clear()
