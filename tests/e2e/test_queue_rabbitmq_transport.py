"""The RabbitMQ transport and client against a real rabbitmq-server, without a modelport server:
what each settles (ack, retry, dead letter), what the broker hands out again, and what happens
when the broker goes away."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import aio_pika
import pytest
from aio_pika.abc import HeadersType

from modelport.frontends.queue.client import DeadLetter, OutgoingRequest
from modelport.frontends.queue.contract import Reply
from modelport.frontends.queue.endpoint import QueueEndpoint, parse_endpoint
from modelport.frontends.queue.rabbitmq import (
    PublishRefused,
    RabbitDelivery,
    RabbitTransport,
)
from modelport.frontends.queue.rabbitmq_client import RabbitQueueClient
from modelport.frontends.queue.transport import BrokerUnavailable
from tests.brokers import RabbitBroker

BODY = b'{"inputs": []}'


def endpoint_for(broker: RabbitBroker, **extra: str) -> QueueEndpoint:
    """An endpoint whose queues are this test's own."""
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    query = {"requests": f"{prefix}.in", "replies": f"{prefix}.out", "dead": f"{prefix}.dead"}
    query.update(extra)
    return parse_endpoint(f"{broker.url}?" + "&".join(f"{k}={v}" for k, v in query.items()))


def run(
    endpoint: QueueEndpoint,
    scenario: Callable[[RabbitTransport, RabbitQueueClient], Awaitable[None]],
) -> None:
    async def main() -> None:
        transport, client = RabbitTransport(endpoint), RabbitQueueClient(endpoint)
        await transport.connect()
        await client.connect()
        try:
            await scenario(transport, client)
        finally:
            await transport.close()
            await client.close()

    asyncio.run(main())


async def take(transport: RabbitTransport, count: int, timeout: float = 10) -> list[RabbitDelivery]:
    """Deliveries until `count` arrived or `timeout` passed."""
    deadline = time.monotonic() + timeout
    taken: list[RabbitDelivery] = []
    while len(taken) < count and time.monotonic() < deadline:
        taken.extend(await transport.receive(count - len(taken)))
    return taken


async def left_over(endpoint: QueueEndpoint) -> Sequence[RabbitDelivery]:
    """What a fresh consumer of the requests queue gets within a second and a half (it acks
    nothing: closing hands it back)."""
    transport = RabbitTransport(endpoint)
    await transport.connect()
    try:
        return await take(transport, 1, timeout=1.5)
    finally:
        await transport.close()


async def publish_raw(
    endpoint: QueueEndpoint, body: bytes, headers: HeadersType, **props: str
) -> None:
    connection = await aio_pika.connect(endpoint.url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(endpoint.requests, durable=True)
        message = aio_pika.Message(body, headers=headers, **props)  # type: ignore[arg-type]
        await channel.default_exchange.publish(message, endpoint.requests)
    finally:
        await connection.close()


def test_request_reply_and_ack(rabbit_broker: RabbitBroker) -> None:
    endpoint = endpoint_for(rabbit_broker)
    reply_to = f"{endpoint.requests}.answers"

    async def scenario(transport: RabbitTransport, client: RabbitQueueClient) -> None:
        await client.send(OutgoingRequest(BODY, "r-1", "mlp", "2", reply_to, header_length=7))
        await client.send(OutgoingRequest(BODY, "r-2", "mlp"))  # default reply queue
        first, second = await take(transport, 2)
        assert first.request is not None and second.request is not None
        assert (first.attempts, first.reply_to, first.problem) == (0, reply_to, "")
        request = first.request
        assert (request.id, request.model, request.version, request.reply_to) == (
            "r-1",
            "mlp",
            "2",
            reply_to,
        )
        assert request.content_type == "application/octet-stream"
        assert request.header_length == "7" and request.body == BODY
        assert request.message_id  # the broker message's id, not the request id
        assert second.request.reply_to is None and second.request.version is None

        await transport.reply(reply_to, Reply("r-1", "mlp", "2", 200, b"out", header_length=3))
        await first.ack()
        # The default reply queue exists from connect() on, before any client declared it.
        await transport.reply(endpoint.replies, Reply("r-2", "mlp", "1", 503, b'{"error":"x"}'))
        await second.ack()

        (answer,) = await client.replies(reply_to, 10, timeout=5)
        assert answer == Reply("r-1", "mlp", "2", 200, b"out", header_length=3)
        (default,) = await client.replies(endpoint.replies, 10, timeout=5)
        assert (default.request_id, default.status, default.header_length) == ("r-2", 503, None)
        assert default.content_type == "application/json"
        assert await client.replies(reply_to, 10, timeout=0.3) == []  # each read once

        await transport.close()
        assert await left_over(endpoint) == []  # acked: gone

    run(endpoint, scenario)


def test_prefetch_bounds_what_is_in_flight(rabbit_broker: RabbitBroker) -> None:
    endpoint = endpoint_for(rabbit_broker, max_in_flight="3")

    async def scenario(transport: RabbitTransport, client: RabbitQueueClient) -> None:
        for number in range(5):
            await client.send(OutgoingRequest(BODY, f"r-{number}", "mlp"))
        await asyncio.sleep(0.5)
        assert len(await transport.receive(2)) == 2  # max_count
        held = await take(transport, 5, timeout=2)
        assert len(held) == 1  # the broker sends no more than 3 unacked
        await held[0].ack()
        assert len(await take(transport, 5, timeout=2)) == 1

    run(endpoint, scenario)


def test_unacked_delivery_comes_back_as_another_attempt(rabbit_broker: RabbitBroker) -> None:
    endpoint = endpoint_for(rabbit_broker)

    async def scenario(transport: RabbitTransport, client: RabbitQueueClient) -> None:
        await client.send(OutgoingRequest(BODY, "r-1", "mlp"))
        (delivery,) = await take(transport, 1)
        assert delivery.attempts == 0
        await transport.close()  # a crash before the ack: the connection goes, unacked

        await transport.connect()
        (again,) = await take(transport, 1)
        assert again.request is not None and again.request.id == "r-1"
        assert again.attempts == 1  # redelivered: the broker handed it out before
        with pytest.raises(BrokerUnavailable):
            await delivery.ack()  # its channel is gone
        await again.ack()

    run(endpoint, scenario)


def test_retry_republishes_with_attempts_and_acks_the_original(rabbit_broker: RabbitBroker) -> None:
    endpoint = endpoint_for(rabbit_broker)

    async def scenario(transport: RabbitTransport, client: RabbitQueueClient) -> None:
        await client.send(OutgoingRequest(BODY, "r-1", "mlp", reply_to="somewhere"))
        (delivery,) = await take(transport, 1)
        await delivery.retry(attempts=2, delay=0.05)
        (copy,) = await take(transport, 1)
        assert copy.attempts == 2 and copy.request is not None
        assert (copy.request.id, copy.reply_to) == ("r-1", "somewhere")
        assert copy.message_id == delivery.message_id
        await copy.ack()
        await transport.close()
        assert await left_over(endpoint) == []  # the original was acked

    run(endpoint, scenario)


def test_retry_cancelled_during_its_delay_leaves_the_original(rabbit_broker: RabbitBroker) -> None:
    endpoint = endpoint_for(rabbit_broker)

    async def scenario(transport: RabbitTransport, client: RabbitQueueClient) -> None:
        await client.send(OutgoingRequest(BODY, "r-1", "mlp"))
        (delivery,) = await take(transport, 1)
        waiting = asyncio.create_task(delivery.retry(attempts=1, delay=30))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await transport.close()

        await transport.connect()
        deliveries = await take(transport, 2, timeout=2)
        assert [d.attempts for d in deliveries] == [1]  # the original, redelivered; no copy

    run(endpoint, scenario)


def test_dead_letter_keeps_the_error_and_attempts(rabbit_broker: RabbitBroker) -> None:
    endpoint = endpoint_for(rabbit_broker)

    async def scenario(transport: RabbitTransport, client: RabbitQueueClient) -> None:
        await client.send(OutgoingRequest(BODY, "r-1", "mlp"))
        await client.send(OutgoingRequest(BODY, "r-2", "mlp"))
        first, second = await take(transport, 2)
        await first.dead_letter(attempts=5, error="model 'mlp' is not ready")
        await second.dead_letter(attempts=1, error="the message is not a request")
        expected = [
            DeadLetter("r-1", "model 'mlp' is not ready", 5),
            DeadLetter("r-2", "the message is not a request", 1),
        ]
        assert await client.dead_letters() == expected
        assert await client.dead_letters() == expected  # read, not consumed
        await transport.close()
        assert await left_over(endpoint) == []

    run(endpoint, scenario)


def test_unreadable_messages_are_deliveries_without_a_request(rabbit_broker: RabbitBroker) -> None:
    endpoint = endpoint_for(rabbit_broker)

    async def scenario(transport: RabbitTransport, client: RabbitQueueClient) -> None:
        await publish_raw(endpoint, BODY, {"model": 5}, reply_to="back")
        await publish_raw(endpoint, b"", {"model": "mlp"})
        await publish_raw(endpoint, BODY, {"model": "mlp", "version": 3, "x-modelport-attempts": 2})
        bad_model, empty, numbered = await take(transport, 3)
        assert bad_model.request is None and "'model'" in bad_model.problem
        assert bad_model.reply_to == "back"
        assert empty.request is None and "empty body" in empty.problem
        assert numbered.request is not None and numbered.request.version == "3"
        assert numbered.attempts == 2
        for delivery in (bad_model, empty, numbered):
            await delivery.ack()

    run(endpoint, scenario)


def test_reply_to_an_unroutable_queue_raises(rabbit_broker: RabbitBroker) -> None:
    endpoint = endpoint_for(rabbit_broker)

    async def scenario(transport: RabbitTransport, client: RabbitQueueClient) -> None:
        # published raw: the client would declare the reply queue
        await publish_raw(
            endpoint, BODY, {"model": "mlp"}, correlation_id="r-1", reply_to="no.such.queue"
        )
        (delivery,) = await take(transport, 1)
        assert delivery.reply_to is not None
        with pytest.raises(PublishRefused, match=r"no\.such\.queue"):
            await transport.reply(delivery.reply_to, Reply("r-1", "mlp", "1", 200, b"out"))
        # the channel survives a returned message: the next reply goes out
        await transport.reply(endpoint.replies, Reply("r-1", "mlp", "1", 200, b"out"))
        await transport.close()
        (kept,) = await left_over(endpoint)  # not acked: still on the broker
        assert kept.request is not None and kept.request.id == "r-1"

    run(endpoint, scenario)


def test_broker_killed_then_restarted(rabbit_broker: RabbitBroker) -> None:
    endpoint = endpoint_for(rabbit_broker)

    async def main() -> None:
        transport, client = RabbitTransport(endpoint), RabbitQueueClient(endpoint)
        await transport.connect()
        await client.connect()
        await client.send(OutgoingRequest(BODY, "r-1", "mlp"))  # confirmed: on disk
        (delivery,) = await take(transport, 1)
        rabbit_broker.kill()
        await asyncio.sleep(0.2)
        with pytest.raises(BrokerUnavailable):
            await transport.receive(10)
        with pytest.raises(BrokerUnavailable):
            await transport.reply(endpoint.replies, Reply("r-1", "mlp", "1", 200, b"out"))
        with pytest.raises(BrokerUnavailable):
            await delivery.ack()
        with pytest.raises(BrokerUnavailable):
            await client.send(OutgoingRequest(BODY, "r-2", "mlp"))
        for _ in range(2):  # after a failure, and twice
            await transport.close()
            await client.close()
        with pytest.raises(BrokerUnavailable):
            await transport.connect()

        await asyncio.to_thread(rabbit_broker.restart)
        await transport.connect()
        await client.connect()
        (again,) = await take(transport, 1)
        assert again.request is not None and again.request.id == "r-1"
        await transport.reply(endpoint.replies, Reply("r-1", "mlp", "1", 200, b"out"))
        await again.ack()
        (answer,) = await client.replies(endpoint.replies, 10, timeout=5)
        assert answer.request_id == "r-1"
        await transport.close()
        await client.close()

    asyncio.run(main())
