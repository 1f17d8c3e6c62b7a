"""Sending requests to a queue and reading the replies, for `modelport queue send`, the tests
and the benchmark: the client side of the contract, one implementation per broker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from modelport.frontends.queue.contract import Reply
from modelport.frontends.queue.endpoint import QueueEndpoint


@dataclass(frozen=True, slots=True)
class OutgoingRequest:
    body: bytes
    request_id: str
    model: str | None = None
    version: str | None = None
    reply_to: str | None = None
    header_length: int | None = None
    """The JSON header's length, when the body uses the binary extension."""

    @property
    def content_type(self) -> str:
        return "application/octet-stream" if self.header_length is not None else "application/json"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    request_id: str | None
    error: str
    attempts: int


class QueueClient(Protocol):
    async def connect(self) -> None: ...

    async def send(self, request: OutgoingRequest) -> None:
        """Publish a request; returns once the broker has accepted it."""
        ...

    async def send_many(self, requests: Sequence[OutgoingRequest]) -> None:
        """Publish several requests at once (pipelined where the broker allows); returns once
        the broker has accepted them all."""
        ...

    async def replies(self, reply_to: str, max_count: int, timeout: float) -> Sequence[Reply]:
        """Replies that arrived on reply_to (each read once), waiting up to timeout seconds for
        the first."""
        ...

    async def dead_letters(self) -> Sequence[DeadLetter]:
        """Every message in the endpoint's dead letters (without removing them)."""
        ...

    async def close(self) -> None: ...


def client_for(endpoint: QueueEndpoint) -> QueueClient:
    if endpoint.broker == "redis":
        from modelport.frontends.queue.redis_streams import RedisQueueClient

        return RedisQueueClient(endpoint)
    if endpoint.broker == "rabbitmq":
        from modelport.frontends.queue.rabbitmq_client import RabbitQueueClient

        return RabbitQueueClient(endpoint)
    from modelport.frontends.queue.nats_client import NatsQueueClient

    return NatsQueueClient(endpoint)
