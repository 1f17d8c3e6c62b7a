"""The seam between the queue frontend and a broker: what every transport provides.

A transport turns broker messages into `Delivery`s and replies into broker messages. Settling a
delivery (ack, retry, dead letter) happens only after its reply was accepted by the broker, so a
server that dies at any moment leaves every unanswered request on the broker. A Kafka transport
fits the same seam: a consumer group, and a commit after the reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from modelport.frontends.queue.contract import QueueRequest, Reply


def describe(exc: BaseException) -> str:
    """`Type: message` of a broker client's exception, for logs and BrokerUnavailable."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class BrokerUnavailable(Exception):
    """The connection to the broker failed or was lost; the consumer reconnects."""


class ReplyRefused(Exception):
    """The broker refused a reply (no such reply queue, or a negative confirm): the request can
    never be answered there, so it goes to the dead letters instead of coming back forever."""


class Delivery(Protocol):
    request: QueueRequest | None
    """None when the message could not be read as a request (`problem` says why)."""
    problem: str
    reply_to: str | None
    """Where the reply goes; readable even from a message that is otherwise unusable."""
    attempts: int
    """Earlier attempts at this request, across restarts (0 on the first)."""

    async def ack(self) -> None:
        """Done with: the broker forgets the message."""
        ...

    async def retry(self, attempts: int, delay: float) -> None:
        """Make the request come back in `delay` seconds as attempt number `attempts` + 1; the
        broker must hold it meanwhile (a server stopping first leaves it unacknowledged)."""
        ...

    async def dead_letter(self, attempts: int, error: str) -> None:
        """Move the message to the dead letters with the last error, then forget it."""
        ...


class Transport(Protocol):
    async def connect(self) -> None:
        """Connect and declare what the endpoint names (streams, queues, groups); raises
        BrokerUnavailable."""
        ...

    async def receive(self, max_count: int) -> Sequence[Delivery]:
        """Up to max_count deliveries; waits a couple of seconds at most, so the caller can
        stop."""
        ...

    async def reply(self, reply_to: str, reply: Reply) -> None:
        """Publish a reply; returns once the broker has accepted it."""
        ...

    async def reply_and_ack(self, reply_to: str, reply: Reply, delivery: Delivery) -> None:
        """Publish a reply, then acknowledge its request: in one step where the broker can do
        both atomically (Redis), never the ack first."""
        ...

    async def close(self) -> None: ...
