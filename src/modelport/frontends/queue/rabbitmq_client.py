"""The client side of RabbitMQ (rabbitmq.py): sending requests and reading replies and dead
letters, for `modelport queue send`, the tests and the benchmark."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
    DeliveryMode,
    HeadersType,
)
from pamqp.common import FieldValue

from modelport.frontends.queue.client import DeadLetter, OutgoingRequest
from modelport.frontends.queue.contract import Reply
from modelport.frontends.queue.endpoint import QueueEndpoint
from modelport.frontends.queue.rabbitmq import (
    ATTEMPTS,
    BROKER_ERRORS,
    ERROR,
    HEADER_LENGTH,
    REPLY_PREFETCH,
    close_connection,
    count_field,
    declare_queue,
    number_or_text,
    open_channel,
    publish_confirmed,
    text_field,
)
from modelport.frontends.queue.transport import (
    BrokerUnavailable,
    describe,
)


class RabbitQueueClient:
    """The client side: publish requests, consume replies (each acked as it is returned)."""

    def __init__(self, endpoint: QueueEndpoint) -> None:
        self.endpoint = endpoint
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._declared: set[str] = set()
        self._replies: dict[str, asyncio.Queue[AbstractIncomingMessage | None]] = {}
        self._lost = ""

    async def connect(self) -> None:
        await self.close()
        connection, channel = await open_channel(self.endpoint)
        try:
            await channel.set_qos(prefetch_count=REPLY_PREFETCH)
        except BROKER_ERRORS as exc:
            await close_connection(connection)
            raise BrokerUnavailable(
                f"{self.endpoint.safe_url}: setting the prefetch failed: {describe(exc)}"
            ) from exc
        self._lost = ""
        channel.close_callbacks.add(self._on_close)
        self._connection, self._channel = connection, channel

    def _on_close(self, channel: object, exc: BaseException | None) -> None:
        if channel is not self._channel or self._lost:
            return
        reason = describe(exc) if exc is not None else "closed"
        self._lost = f"{self.endpoint.safe_url}: the channel closed: {reason}"
        for arrived in self._replies.values():
            arrived.put_nowait(None)  # wakes replies() waiting for the first one

    def _live(self) -> AbstractChannel:
        if self._lost:
            raise BrokerUnavailable(self._lost)
        if self._channel is None:
            raise BrokerUnavailable(f"{self.endpoint.safe_url}: not connected")
        return self._channel

    async def _queue(self, name: str) -> AbstractQueue:
        queue = await declare_queue(self._live(), name, self.endpoint.safe_url)
        self._declared.add(name)
        return queue

    async def send(self, request: OutgoingRequest) -> None:
        # The reply queue too, so that the reply is routable however soon it comes.
        for name in (self.endpoint.requests, request.reply_to):
            if name is not None and name not in self._declared:
                await self._queue(name)
        headers: HeadersType = {}
        for key, value in (("model", request.model), ("version", request.version)):
            if value is not None:
                headers[key] = value
        if request.header_length is not None:
            headers[HEADER_LENGTH] = request.header_length
        message = aio_pika.Message(
            request.body,
            headers=headers,
            content_type=request.content_type,
            correlation_id=request.request_id,
            reply_to=request.reply_to,
            delivery_mode=DeliveryMode.PERSISTENT,
        )
        await publish_confirmed(
            self._live(), message, self.endpoint.requests, self.endpoint.safe_url
        )

    async def _consuming(self, reply_to: str) -> asyncio.Queue[AbstractIncomingMessage | None]:
        arrived = self._replies.get(reply_to)
        if arrived is not None:
            return arrived
        queue = await self._queue(reply_to)
        arrived = asyncio.Queue()

        async def on_message(message: AbstractIncomingMessage) -> None:
            arrived.put_nowait(message)

        try:
            await queue.consume(on_message, no_ack=False)
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(
                f"{self.endpoint.safe_url}: consuming {reply_to!r} failed: {describe(exc)}"
            ) from exc
        self._replies[reply_to] = arrived
        return arrived

    async def send_many(self, requests: Sequence[OutgoingRequest]) -> None:
        """All published at once; each still waits for its own confirmation."""
        await asyncio.gather(*(self.send(request) for request in requests))

    async def replies(self, reply_to: str, max_count: int, timeout: float) -> list[Reply]:
        arrived = await self._consuming(reply_to)
        if max_count < 1:
            return []
        try:
            first = await asyncio.wait_for(arrived.get(), max(timeout, 0.0))
        except TimeoutError:
            self._live()
            return []
        messages = [first]
        while len(messages) < max_count and not arrived.empty():
            messages.append(arrived.get_nowait())
        self._live()
        # Replies consumed but not returned stay unacked: the broker hands them out again.
        received = [message for message in messages if message is not None]
        try:
            for message in received:
                await message.ack()
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(
                f"{self.endpoint.safe_url}: acknowledging replies failed: {describe(exc)}"
            ) from exc
        return [_reply(message) for message in received]

    async def dead_letters(self) -> list[DeadLetter]:
        # basic.get hands out each message once while it stays unacked; the nack that puts them
        # all back goes out on the same channel as the next call's gets, so they are back first.
        queue = await declare_queue(self._live(), self.endpoint.dead, self.endpoint.safe_url)
        held: list[AbstractIncomingMessage] = []
        try:
            while (message := await queue.get(no_ack=False, fail=False)) is not None:
                held.append(message)
            # one by one: `multiple` would also requeue replies consumed on this channel
            for message in held:
                await message.nack(requeue=True)
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(
                f"{self.endpoint.safe_url}: reading {self.endpoint.dead!r} failed: {describe(exc)}"
            ) from exc
        return [_dead_letter(message) for message in held]

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._declared.clear()
        self._replies.clear()
        if connection is not None:
            await close_connection(connection)


def _reply(message: AbstractIncomingMessage) -> Reply:
    headers: Mapping[str, FieldValue] = message.headers or {}

    def text(name: str) -> str:
        try:
            return number_or_text(headers.get(name), name) or ""
        except ValueError:
            return ""

    status, length = text("status"), text(HEADER_LENGTH)
    return Reply(
        request_id=message.correlation_id or "",
        model=text("model"),
        version=text("version"),
        status=int(status) if status.isdigit() else 0,
        body=message.body,
        header_length=int(length) if length.isdigit() else None,
    )


def _dead_letter(message: AbstractIncomingMessage) -> DeadLetter:
    headers: Mapping[str, FieldValue] = message.headers or {}
    try:
        error = text_field(headers.get(ERROR), ERROR) or ""
    except ValueError:
        error = ""
    return DeadLetter(message.correlation_id, error, count_field(headers.get(ATTEMPTS)))
