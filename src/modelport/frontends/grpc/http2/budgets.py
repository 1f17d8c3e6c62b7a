"""Budgets that keep one HTTP/2 client from keeping the event loop busy for free.

- Frame work: every frame costs a unit (SETTINGS one more per setting, header blocks one more
  per KiB; DATA of 1 KiB or more, which moves real bytes within the windows, nothing). The units
  refill with time and with each call completed or message delivered, so a client doing real
  work never runs out, while a flood of frames that do nothing (PING, SETTINGS, PRIORITY, tiny
  DATA, WINDOW_UPDATE) ends in GOAWAY.
- Resets: streams a client opens and then resets before they finish (HTTP/2 rapid reset,
  CVE-2023-44487) spend from a bucket that refills only with time.

Both are kept per client address, shared by its connections: reconnecting refills neither, and
an address that has run out is refused at once when it connects again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

from modelport.frontends.grpc.http2.limits import Http2Limits


@dataclass(slots=True)
class TokenBucket:
    capacity: float
    rate: float
    """Tokens per second."""
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.capacity

    def spend(self, cost: float) -> bool:
        """Take `cost` tokens if there are that many (after refilling for the time passed)."""
        if self.tokens < cost:
            self._refill()
            if self.tokens < cost:
                return False
        self.tokens -= cost
        return True

    def low(self) -> bool:
        """Below a tenth of capacity, after refilling."""
        self._refill()
        return self.tokens < self.capacity / 10

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now


class FrameWork:
    """A client address's frame units. Spent on the path of every frame: one subtraction
    and one comparison, reading the clock only when the units run out."""

    __slots__ = ("_capacity", "_rate", "_stamp", "units")

    def __init__(self, capacity: int, rate: float) -> None:
        self._capacity = capacity
        self._rate = rate
        self._stamp = time.monotonic()
        self.units = float(capacity)

    def refill(self) -> bool:
        """After `units` went negative: add what the time passed earned; False if still short."""
        now = time.monotonic()
        self.units = min(self._capacity, self.units + (now - self._stamp) * self._rate)
        self._stamp = now
        return self.units >= 0

    def low(self) -> bool:
        """Below a tenth of capacity, after refilling."""
        self.refill()
        return self.units < self._capacity / 10

    def credit(self, units: float) -> None:
        """Real work done (a call completed, a message delivered); the units may pass capacity
        by this last credit, no more (cheaper than min() on every call)."""
        if self.units < self._capacity:
            self.units += units


@dataclass(slots=True)
class PeerBudget:
    """One client address's budgets."""

    resets: TokenBucket
    work: FrameWork

    spent: bool = False
    """One of the two ran out on some connection of this address."""

    def refuses(self) -> bool:
        """Whether a new connection from the address is turned away: after a budget ran out,
        until both are back above a tenth of their capacity (so a client that was cut off cannot
        reconnect and start again at once)."""
        if self.spent:
            self.spent = self.resets.low() or self.work.low()
        return self.spent


class PeerBudgets:
    """Budgets by client address, the least recently seen forgotten past `addresses`."""

    def __init__(self, limits: Http2Limits, addresses: int = 4096) -> None:
        self._limits = limits
        self._addresses = addresses
        self._budgets: OrderedDict[str, PeerBudget] = OrderedDict()

    def of(self, address: str) -> PeerBudget:
        budgets = self._budgets
        found = budgets.get(address)
        if found is not None:
            budgets.move_to_end(address)
            return found
        limits = self._limits
        made = budgets[address] = PeerBudget(
            TokenBucket(limits.resets, limits.resets_per_second),
            FrameWork(limits.frame_units, limits.frame_units_per_second),
        )
        if len(budgets) > self._addresses:
            budgets.popitem(last=False)
        return made
