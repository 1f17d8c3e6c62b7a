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

from modelport.frontends.queue.client import DeadLetter, OutgoingRequest
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


async def _publish(
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


async def _open(endpoint: QueueEndpoint) -> tuple[AbstractConnection, AbstractChannel]:
    """A connection and a confirming channel, with nothing declared yet."""
    try:
        connection = await aio_pika.connect(endpoint.url, timeout=CONNECT_TIMEOUT_S)
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(f"{endpoint.safe_url}: cannot connect: {describe(exc)}") from exc
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    except BROKER_ERRORS as exc:
        await _close(connection)
        raise BrokerUnavailable(
            f"{endpoint.safe_url}: cannot open a channel: {describe(exc)}"
        ) from exc
    return connection, channel


async def _declare(channel: AbstractChannel, name: str, where: str) -> AbstractQueue:
    try:
        return await channel.declare_queue(name, durable=True)
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(
            f"{where}: declaring the durable queue {name!r} failed: {describe(exc)}"
        ) from exc


async def _close(connection: AbstractConnection) -> None:
    with contextlib.suppress(*BROKER_ERRORS):
        await connection.close()


def _text(value: FieldValue | None, name: str) -> str | None:
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


def _number_or_text(value: FieldValue | None, name: str) -> str | None:
    """A header that may also be sent as an AMQP integer (a version, a length)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _text(value, name)


def _count(value: FieldValue | None) -> int:
    """Our attempts header: an integer, or digits; anything else counts as none."""
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def _copy(
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
        await _publish(self.channel, message, routing_key, self.endpoint.safe_url)

    async def close(self) -> None:
        if not self.lost:
            self.lost = f"{self.endpoint.safe_url}: the connection was closed"
        await _close(self.connection)


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
        self.attempts = _count(headers.get(ATTEMPTS)) + (1 if message.redelivered else 0)
        self.message_id = message.message_id or str(message.delivery_tag)
        with contextlib.suppress(ValueError):
            self.reply_to = _text(message.reply_to, "reply_to")
        if not message.body:
            self.problem = "the message has an empty body"
            return
        try:
            self.request = QueueRequest(
                body=message.body,
                message_id=self.message_id,
                model=_text(headers.get("model"), "model"),
                version=_number_or_text(headers.get("version"), "version"),
                request_id=_text(message.correlation_id, "correlation_id"),
                reply_to=self.reply_to,
                content_type=_text(message.content_type, "content_type"),
                header_length=_number_or_text(headers.get(HEADER_LENGTH), HEADER_LENGTH),
                traceparent=_text(headers.get("traceparent"), "traceparent"),
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
        copy = _copy(self.message, self.message_id, {ATTEMPTS: attempts}, keep_ttl=True)
        await self.session.publish(copy, self.session.endpoint.requests)
        await self.ack()

    async def dead_letter(self, attempts: int, error: str) -> None:
        headers: HeadersType = {ATTEMPTS: attempts, ERROR: error}
        copy = _copy(self.message, self.message_id, headers, keep_ttl=False)
        await self.session.publish(copy, self.session.endpoint.dead)
        await self.ack()


class RabbitTransport:
    def __init__(self, endpoint: QueueEndpoint) -> None:
        self.endpoint = endpoint
        self._session: _Session | None = None

    async def connect(self) -> None:
        await self.close()
        where = self.endpoint.safe_url
        connection, channel = await _open(self.endpoint)
        try:
            try:
                await channel.set_qos(prefetch_count=self.endpoint.max_in_flight)
            except BROKER_ERRORS as exc:
                raise BrokerUnavailable(
                    f"{where}: setting the prefetch failed: {describe(exc)}"
                ) from exc
            requests = await _declare(channel, self.endpoint.requests, where)
            # Declared here so that replies to the default queue are routable before any
            # client has declared it.
            await _declare(channel, self.endpoint.replies, where)
            await _declare(channel, self.endpoint.dead, where)
            session = _Session(self.endpoint, connection, channel)
            try:
                await requests.consume(session.on_message, no_ack=False)
            except BROKER_ERRORS as exc:
                raise BrokerUnavailable(
                    f"{where}: consuming {self.endpoint.requests!r} failed: {describe(exc)}"
                ) from exc
        except BaseException:
            await _close(connection)
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
        connection, channel = await _open(self.endpoint)
        try:
            await channel.set_qos(prefetch_count=REPLY_PREFETCH)
        except BROKER_ERRORS as exc:
            await _close(connection)
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
        queue = await _declare(self._live(), name, self.endpoint.safe_url)
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
        await _publish(self._live(), message, self.endpoint.requests, self.endpoint.safe_url)

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
        queue = await _declare(self._live(), self.endpoint.dead, self.endpoint.safe_url)
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
            await _close(connection)


def _reply(message: AbstractIncomingMessage) -> Reply:
    headers: Mapping[str, FieldValue] = message.headers or {}

    def text(name: str) -> str:
        try:
            return _number_or_text(headers.get(name), name) or ""
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
        error = _text(headers.get(ERROR), ERROR) or ""
    except ValueError:
        error = ""
    return DeadLetter(message.correlation_id, error, _count(headers.get(ATTEMPTS)))
