"""The queue frontend's decisions, broker-free: reply, ack, retry, dead letter, for each kind of
outcome; and --queue URL parsing, redaction included. The brokers themselves are in tests/e2e."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from modelport.core.data_plane import DataPlane
from modelport.frontends.off_loop import OffLoop
from modelport.frontends.queue.contract import QueueRequest, Reply
from modelport.frontends.queue.endpoint import EndpointError, parse_endpoint, parse_endpoints
from modelport.frontends.queue.processor import QueueProcessor
from modelport.frontends.queue.transport import ReplyRefused
from tests.fakes import Core, make_core

GOOD = orjson.dumps(
    {
        "id": "body-id",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}],
    }
)


@dataclass
class FakeDelivery:
    request: QueueRequest | None
    attempts: int = 0
    problem: str = ""
    reply_to: str | None = None
    settled: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        self.settled.append("ack")

    async def retry(self, attempts: int, delay: float) -> None:
        self.settled.append(f"retry {attempts}")

    async def dead_letter(self, attempts: int, error: str) -> None:
        self.settled.append(f"dead {attempts}: {error}")


@dataclass
class FakeTransport:
    replies: list[tuple[str, Reply]] = field(default_factory=list)
    refuse: Callable[[Reply], bool] = lambda reply: False

    async def connect(self) -> None: ...

    async def receive(self, max_count: int) -> list[FakeDelivery]:
        return []

    async def reply(self, reply_to: str, reply: Reply) -> None:
        if self.refuse(reply):
            raise ReplyRefused("too large for the broker")
        self.replies.append((reply_to, reply))

    async def reply_and_ack(self, reply_to: str, reply: Reply, delivery: FakeDelivery) -> None:
        await self.reply(reply_to, reply)
        await delivery.ack()

    async def close(self) -> None: ...


class Counts:
    def __init__(self) -> None:
        self.events: list[str] = []

    def received(self) -> None:
        self.events.append("received")

    def replied(self, status: int, seconds: float) -> None:
        self.events.append(f"replied {status}")

    def retried(self) -> None:
        self.events.append("retried")

    def dead_lettered(self) -> None:
        self.events.append("dead")

    def in_flight(self, delta: int) -> None: ...

    def connected(self, up: bool) -> None: ...

    def connection_lost(self) -> None: ...


@dataclass
class Rig:
    core: Core
    transport: FakeTransport
    counts: Counts
    processor: QueueProcessor


def run(scenario: Callable[[Rig], Awaitable[Any]], url: str = "redis://h/0") -> Any:
    async def main() -> Any:
        core = make_core()
        core.source.put("m")
        plane = DataPlane(core.manager)
        await plane.start()
        transport, counts = FakeTransport(), Counts()
        endpoint = parse_endpoint(url)
        processor = QueueProcessor(plane, transport, endpoint, counts, OffLoop())
        try:
            return await scenario(Rig(core, transport, counts, processor))
        finally:
            await plane.close()

    return asyncio.run(main())


def request(body: bytes = GOOD, model: str | None = "m", **extra: Any) -> QueueRequest:
    return QueueRequest(body=body, message_id="1700-0", model=model, **extra)


def error_of(reply: Reply) -> str:
    return str(orjson.loads(reply.body)["error"])


def test_an_answer_is_replied_then_acknowledged() -> None:
    async def scenario(rig: Rig) -> None:
        delivery = FakeDelivery(request(request_id="r1", reply_to="mine"))
        assert await rig.processor.process(delivery) is None
        [(reply_to, reply)] = rig.transport.replies
        assert (reply_to, reply.status, reply.request_id, reply.model) == ("mine", 200, "r1", "m")
        assert orjson.loads(reply.body)["id"] == "r1"
        assert delivery.settled == ["ack"]

    run(scenario)


def test_the_request_id_falls_back_to_the_body_then_the_broker() -> None:
    async def scenario(rig: Rig) -> None:
        await rig.processor.process(FakeDelivery(request()))
        body_less = GOOD.replace(b'"id":"body-id",', b"")
        await rig.processor.process(FakeDelivery(request(body_less)))
        ids = [reply.request_id for _, reply in rig.transport.replies]
        assert ids == ["body-id", "1700-0"]
        assert [to for to, _ in rig.transport.replies] == ["modelport.replies"] * 2

    run(scenario)


@pytest.mark.parametrize(
    ("message", "status", "words"),
    [
        (request(b'{"inputs": 3}'), 400, "'inputs' must be a non-empty list"),
        (request(model="nope"), 404, "unknown model 'nope'"),
        (request(model=None), 400, "names no model"),
        (request(header_length="x"), 400, "is not an integer"),
    ],
)
def test_a_client_error_is_answered_at_once_and_not_retried(
    message: QueueRequest, status: int, words: str
) -> None:
    async def scenario(rig: Rig) -> None:
        delivery = FakeDelivery(message)
        assert await rig.processor.process(delivery) is None
        [(_, reply)] = rig.transport.replies
        assert reply.status == status and words in error_of(reply)
        assert delivery.settled == ["ack"]
        assert "retried" not in rig.counts.events

    run(scenario)


def test_a_transient_failure_is_retried_until_the_last_attempt() -> None:
    async def scenario(rig: Rig) -> None:
        rig.core.runtimes.failing_runs.add("m-1")
        first = FakeDelivery(request())
        assert await rig.processor.process(first) == 0.5  # handed back: retry in retry_delay
        assert first.settled == [] and rig.transport.replies == []
        last = FakeDelivery(request(), attempts=4)  # the fifth attempt of max_attempts 5
        assert await rig.processor.process(last) is None
        [(_, reply)] = rig.transport.replies
        assert reply.status == 500 and "the fake model broke" in error_of(reply)
        assert last.settled == [
            "dead 5: model 'm' version 1 failed: ValueError: the fake model broke"
        ]

    run(scenario)


def test_a_rate_limited_request_is_retried_no_sooner_than_its_retry_after() -> None:
    async def scenario(rig: Rig) -> None:
        rig.core.source.put("m", (1,), {"rate_limit": {"requests_per_second": 0.5, "burst": 1}})
        await rig.core.manager.sync("m")
        assert await rig.processor.process(FakeDelivery(request())) is None  # the burst
        limited = FakeDelivery(request())
        delay = await rig.processor.process(limited)
        # a token every 2 s: the backoff alone (retry_delay 0.5 s) would come back too soon
        assert delay is not None and 1.9 < delay <= 2.0
        assert limited.settled == [] and len(rig.transport.replies) == 1
        assert rig.processor.retry_delay(1, at_least=60.0) == 15.0  # half the visibility timeout

    run(scenario)


def test_a_message_delivered_too_often_is_not_run_again() -> None:
    async def scenario(rig: Rig) -> None:
        delivery = FakeDelivery(request(), attempts=5)  # e.g. it crashed the server each time
        assert await rig.processor.process(delivery) is None
        assert sum(host.runs for host in rig.core.runtimes.hosts) == 0
        [(_, reply)] = rig.transport.replies
        assert reply.status == 500 and "delivered 5 times" in error_of(reply)
        assert delivery.settled[0].startswith("dead 6: ")

    run(scenario)


def test_an_unreadable_message_goes_to_the_dead_letters_with_a_reply_if_it_can() -> None:
    async def scenario(rig: Rig) -> None:
        with_address = FakeDelivery(None, problem="no body", reply_to="mine")
        without = FakeDelivery(None, problem="no body")
        await rig.processor.process(with_address)
        await rig.processor.process(without)
        [(reply_to, reply)] = rig.transport.replies
        assert reply_to == "mine" and reply.status == 400 and "no body" in error_of(reply)
        assert (
            with_address.settled
            == without.settled
            == ["dead 1: the message is not a request: no body"]
        )

    run(scenario)


def test_a_refused_reply_is_replaced_by_a_short_error_or_dead_lettered() -> None:
    async def scenario(rig: Rig) -> None:
        rig.transport.refuse = lambda reply: reply.status == 200  # "too large"
        delivery = FakeDelivery(request())
        await rig.processor.process(delivery)
        [(_, reply)] = rig.transport.replies
        assert reply.status == 500 and "could not be delivered" in error_of(reply)
        assert delivery.settled == ["ack"]

        rig.transport.refuse = lambda reply: True  # no such reply queue at all
        nowhere = FakeDelivery(request(reply_to="nowhere"))
        await rig.processor.process(nowhere)
        assert nowhere.settled == ["dead 1: the reply to nowhere was refused"]

    run(scenario)


def test_retry_delays_double_and_stay_under_half_the_visibility_timeout() -> None:
    async def scenario(rig: Rig) -> None:
        delays = [rig.processor.retry_delay(n) for n in (1, 2, 3, 4, 5)]
        assert delays == [0.1, 0.2, 0.4, 0.8, 1.0]

    run(scenario, "redis://h/0?retry_delay=0.1&visibility_timeout=2")


def test_endpoint_defaults_overrides_and_refusals() -> None:
    endpoint = parse_endpoint("redis://h:6379/0?requests=in&model=m&max_in_flight=8&db_x=1")
    assert (endpoint.broker, endpoint.requests, endpoint.replies) == (
        "redis",
        "in",
        "modelport.replies",
    )
    assert (endpoint.model, endpoint.max_in_flight, endpoint.max_attempts) == ("m", 8, 5)
    assert endpoint.url == "redis://h:6379/0?db_x=1"  # the client gets the rest
    assert [e.broker for e in parse_endpoints(("amqp://h/,nats://h", "rediss://h"))] == [
        "rabbitmq",
        "nats",
        "redis",
    ]
    for bad, words in [
        ("kafka://h", "unknown scheme 'kafka'"),
        ("redis:///0", "names no host"),
        ("redis://h?max_in_flight=0", "max_in_flight must be an integer from 1"),
        ("redis://h?requests=a b", "is not a usable name"),
        ("redis://h?retry_delay=soon", "retry_delay must be seconds"),
    ]:
        with pytest.raises(EndpointError, match=words):
            parse_endpoint(bad)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://user:s3cret@h:5672/", "amqp://user@h:5672/"),
        ("nats://t0ken@h:4222", "nats://h:4222"),
        ("redis://h/0?password=s3cret&db=1", "redis://h/0?password=%2A%2A%2A&db=1"),
        ("nats://h?token=s3cret", "nats://h?token=%2A%2A%2A"),
    ],
)
def test_logs_see_the_url_without_its_secrets(url: str, shown: str) -> None:
    endpoint = parse_endpoint(url)
    assert endpoint.safe_url == shown
    assert "s3cret" not in endpoint.safe_url and "t0ken" not in endpoint.safe_url
    with pytest.raises(EndpointError) as caught:
        parse_endpoint(url.replace("://", "x://", 1))
    assert "s3cret" not in str(caught.value) and "t0ken" not in str(caught.value)
