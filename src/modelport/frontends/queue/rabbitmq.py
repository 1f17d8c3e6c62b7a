"""RabbitMQ (AMQP 0-9-1): requests are messages of a durable queue consumed with manual acks,
replies are persistent messages published to the default exchange with the routing key
`reply_to`.

The channel's prefetch (basic.qos) is the endpoint's max_in_flight, so the broker itself bounds
what this server holds unacknowledged. Every publish waits for the broker's confirm and is
mandatory: a message no queue takes comes back (basic.return) and is raised as PublishRefused,
so the request it answers stays unacknowledged. A retry publishes a copy with
`x-modelport-attempts` raised, then acks the original; a dead letter is the same into the
dead-letter queue. Both go out on the channel the original came in on: once that channel is
gone the broker redelivers the original, and a copy would only be a duplicate.

Reconnecting is the consumer's job (aio_pika.connect, not connect_robust): the messages a dead
channel held unacknowledged are redelivered by the broker with `redelivered` set, which counts
as one more attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import aio_pika
import aiormq.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
    DeliveryMode,
    HeadersType,
)
from pamqp.common import FieldValue

from modelport.frontends.queue.contract import QueueRequest, Reply
from modelport.frontends.queue.endpoint import QueueEndpoint
from modelport.frontends.queue.transport import (
    BrokerUnavailable,
    Delivery,
    ReplyRefused,
    describe,
)

RECEIVE_WAIT_S = 1.0
CONNECT_TIMEOUT_S = 10.0
REPLY_PREFETCH = 1024
ATTEMPTS = "x-modelport-attempts"
ERROR = "x-modelport-error"
HEADER_LENGTH = "inference_header_content_length"

# aiormq raises its own errors, OSError (TimeoutError included) and, for a closed channel,
# ChannelInvalidStateError (a RuntimeError).
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    OSError,
)


class PublishRefused(ReplyRefused):
    """The broker did not take a message: no queue is bound to its routing key (it came back
    unroutable), or the broker refused it (basic.nack)."""


async def publish_confirmed(
    channel: AbstractChannel, message: aio_pika.Message, routing_key: str, where: str
) -> None:
    """Publish to the default exchange and return once the broker confirmed it."""
    try:
        await channel.default_exchange.publish(message, routing_key, mandatory=True)
    except aiormq.exceptions.PublishError as exc:
        raise PublishRefused(
            f"{where}: the broker returned a message for {routing_key!r} as unroutable (no "
            f"queue of that name): {exc.args[0] if exc.args else 'NO_ROUTE'}"
        ) from exc
    except aiormq.exceptions.DeliveryError as exc:
        raise PublishRefused(f"{where}: the broker refused a message for {routing_key!r}") from exc
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(
            f"{where}: publishing to {routing_key!r} failed: {describe(exc)}"
        ) from exc


async def open_channel(endpoint: QueueEndpoint) -> tuple[AbstractConnection, AbstractChannel]:
    """A connection and a confirming channel, with nothing declared yet."""
    try:
        connection = await aio_pika.connect(endpoint.url, timeout=CONNECT_TIMEOUT_S)
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(f"{endpoint.safe_url}: cannot connect: {describe(exc)}") from exc
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    except BROKER_ERRORS as exc:
        await close_connection(connection)
        raise BrokerUnavailable(
            f"{endpoint.safe_url}: cannot open a channel: {describe(exc)}"
        ) from exc
    return connection, channel


async def declare_queue(channel: AbstractChannel, name: str, where: str) -> AbstractQueue:
    try:
        return await channel.declare_queue(name, durable=True)
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(
            f"{where}: declaring the durable queue {name!r} failed: {describe(exc)}"
        ) from exc


async def close_connection(connection: AbstractConnection) -> None:
    with contextlib.suppress(*BROKER_ERRORS):
        await connection.close()


def text_field(value: FieldValue | None, name: str) -> str | None:
    """A header or property as text; None when absent or empty. Raises ValueError for a value
    that is not text (bytes count when they are UTF-8)."""
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"the header {name!r} is not UTF-8 text") from None
    raise ValueError(f"the header {name!r} is a {type(value).__name__}, not text")


def number_or_text(value: FieldValue | None, name: str) -> str | None:
    """A header that may also be sent as an AMQP integer (a version, a length)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return text_field(value, name)


def count_field(value: FieldValue | None) -> int:
    """Our attempts header: an integer, or digits; anything else counts as none."""
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def copy_message(
    message: AbstractIncomingMessage, message_id: str, headers: HeadersType, keep_ttl: bool
) -> aio_pika.Message:
    """The message again, persistent, with `headers` added. user_id is left out: the broker
    rejects a publish whose user_id is not the publishing connection's user."""
    return aio_pika.Message(
        message.body,
        headers={**(message.headers or {}), **headers},
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        expiration=message.expiration if keep_ttl else None,
        message_id=message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


class _Session:
    """One connection and its channel: the deliveries that came in on it, and whether it is
    gone (then nothing received on it can be settled any more)."""

    def __init__(
        self, endpoint: QueueEndpoint, connection: AbstractConnection, channel: AbstractChannel
    ) -> None:
        self.endpoint = endpoint
        self.connection = connection
        self.channel = channel
        # bounded by the prefetch: the broker sends no more than max_in_flight unacked
        self.arrived: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self.lost = ""
        channel.close_callbacks.add(self._on_close)

    def _on_close(self, _channel: object, exc: BaseException | None) -> None:
        if not self.lost:
            reason = describe(exc) if exc is not None else "closed"
            self.lost = f"{self.endpoint.safe_url}: the channel closed: {reason}"
            self.arrived.put_nowait(None)  # wakes a receive() waiting for the first message

    def check(self) -> None:
        if self.lost:
            raise BrokerUnavailable(self.lost)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.arrived.put_nowait(message)

    async def publish(self, message: aio_pika.Message, routing_key: str) -> None:
        self.check()
        await publish_confirmed(self.channel, message, routing_key, self.endpoint.safe_url)

    async def close(self) -> None:
        if not self.lost:
            self.lost = f"{self.endpoint.safe_url}: the connection was closed"
        await close_connection(self.connection)


@dataclass(eq=False)
class RabbitDelivery:
    session: _Session
    message: AbstractIncomingMessage
    request: QueueRequest | None = field(init=False, default=None)
    problem: str = field(init=False, default="")
    reply_to: str | None = field(init=False, default=None)
    attempts: int = field(init=False, default=0)
    message_id: str = field(init=False, default="")

    def __post_init__(self) -> None:
        message = self.message
        headers: Mapping[str, FieldValue] = message.headers or {}
        self.attempts = count_field(headers.get(ATTEMPTS)) + (1 if message.redelivered else 0)
        self.message_id = message.message_id or str(message.delivery_tag)
        with contextlib.suppress(ValueError):
            self.reply_to = text_field(message.reply_to, "reply_to")
        if not message.body:
            self.problem = "the message has an empty body"
            return
        try:
            self.request = QueueRequest(
                body=message.body,
                message_id=self.message_id,
                model=text_field(headers.get("model"), "model"),
                version=number_or_text(headers.get("version"), "version"),
                request_id=text_field(message.correlation_id, "correlation_id"),
                reply_to=self.reply_to,
                content_type=text_field(message.content_type, "content_type"),
                header_length=number_or_text(headers.get(HEADER_LENGTH), HEADER_LENGTH),
                traceparent=text_field(headers.get("traceparent"), "traceparent"),
            )
        except ValueError as exc:
            self.problem = str(exc)

    async def ack(self) -> None:
        self.session.check()
        try:
            await self.message.ack()
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(
                f"{self.session.endpoint.safe_url}: acknowledging failed: {describe(exc)}"
            ) from exc

    async def retry(self, attempts: int, delay: float) -> None:
        # Cancelled while waiting (the server stops): nothing is published or acked, and the
        # broker hands the original out again.
        await asyncio.sleep(delay)
        copy = copy_message(self.message, self.message_id, {ATTEMPTS: attempts}, keep_ttl=True)
        await self.session.publish(copy, self.session.endpoint.requests)
        await self.ack()

    async def dead_letter(self, attempts: int, error: str) -> None:
        headers: HeadersType = {ATTEMPTS: attempts, ERROR: error}
        copy = copy_message(self.message, self.message_id, headers, keep_ttl=False)
        await self.session.publish(copy, self.session.endpoint.dead)
        await self.ack()


class RabbitTransport:
    def __init__(self, endpoint: QueueEndpoint) -> None:
        self.endpoint = endpoint
        self._session: _Session | None = None

    async def connect(self) -> None:
        await self.close()
        where = self.endpoint.safe_url
        connection, channel = await open_channel(self.endpoint)
        try:
            try:
                await channel.set_qos(prefetch_count=self.endpoint.max_in_flight)
            except BROKER_ERRORS as exc:
                raise BrokerUnavailable(
                    f"{where}: setting the prefetch failed: {describe(exc)}"
                ) from exc
            requests = await declare_queue(channel, self.endpoint.requests, where)
            # Declared here so that replies to the default queue are routable before any
            # client has declared it.
            await declare_queue(channel, self.endpoint.replies, where)
            await declare_queue(channel, self.endpoint.dead, where)
            session = _Session(self.endpoint, connection, channel)
            try:
                await requests.consume(session.on_message, no_ack=False)
            except BROKER_ERRORS as exc:
                raise BrokerUnavailable(
                    f"{where}: consuming {self.endpoint.requests!r} failed: {describe(exc)}"
                ) from exc
        except BaseException:
            await close_connection(connection)
            raise
        self._session = session

    def _live(self) -> _Session:
        if self._session is None:
            raise BrokerUnavailable(f"{self.endpoint.safe_url}: not connected")
        self._session.check()
        return self._session

    async def receive(self, max_count: int) -> list[RabbitDelivery]:
        session = self._live()
        if max_count < 1:
            return []
        try:
            first = await asyncio.wait_for(session.arrived.get(), RECEIVE_WAIT_S)
        except TimeoutError:
            session.check()
            return []
        messages = [first]
        while len(messages) < max_count and not session.arrived.empty():
            messages.append(session.arrived.get_nowait())
        # What came in on a channel that has closed since can no longer be acked; the broker
        # hands it out again.
        session.check()
        return [RabbitDelivery(session, message) for message in messages if message is not None]

    async def reply(self, reply_to: str, reply: Reply) -> None:
        headers: HeadersType = {
            "model": reply.model,
            "version": reply.version,
            "status": str(reply.status),
        }
        if reply.header_length is not None:
            headers[HEADER_LENGTH] = reply.header_length
        message = aio_pika.Message(
            reply.body,
            headers=headers,
            content_type=reply.content_type,
            correlation_id=reply.request_id,
            delivery_mode=DeliveryMode.PERSISTENT,
        )
        await self._live().publish(message, reply_to)

    async def reply_and_ack(self, reply_to: str, reply: Reply, delivery: Delivery) -> None:
        await self.reply(reply_to, reply)
        await delivery.ack()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
