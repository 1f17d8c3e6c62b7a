"""The broker fixtures work for real: a message round trip through each broker with its own
client library, and a message persisted before restart() still there after it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aio_pika
import nats
import pytest
import redis
from nats.js.api import StorageType
from pamqp.commands import Basic

from tests.broker_fixtures import started
from tests.brokers import Broker, NatsBroker, RabbitBroker, RedisBroker, marked_processes


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if cmdline(pid)]


def restart_keeps_address(broker: Broker) -> None:
    """restart(), and check it came back on the same URL as new processes, the old all gone."""
    url, old = broker.url, broker.survivors()
    assert old, "a running broker has processes"
    broker.restart()
    assert broker.url == url
    assert not alive(old), [cmdline(pid) for pid in alive(old)]


# -- Redis Streams ----------------------------------------------------------------------------


def redis_client(broker: RedisBroker) -> redis.Redis:
    return redis.Redis.from_url(broker.url, decode_responses=True, socket_timeout=10)


def test_redis_stream_round_trip(redis_broker: RedisBroker) -> None:
    stream, group = unique("requests-"), "workers"
    with redis_client(redis_broker) as client:
        client.xgroup_create(stream, group, id="0", mkstream=True)
        entry = client.xadd(stream, {"payload": "hello"})
        read = client.xreadgroup(group, "worker-1", {stream: ">"}, count=1, block=5000)
        assert read == [[stream, [(entry, {"payload": "hello"})]]]
        assert client.xack(stream, group, entry) == 1
        assert client.xpending(stream, group)["pending"] == 0


def test_redis_restart_keeps_stream_entry(redis_broker: RedisBroker) -> None:
    stream, group = unique("requests-"), "workers"
    with redis_client(redis_broker) as client:
        client.xgroup_create(stream, group, id="0", mkstream=True)
        entry = client.xadd(stream, {"payload": "kept"})
        client.xreadgroup(group, "worker-1", {stream: ">"}, count=1)  # pending, not acked
    restart_keeps_address(redis_broker)
    with redis_client(redis_broker) as client:
        assert client.xrange(stream) == [(entry, {"payload": "kept"})]
        assert client.xpending(stream, group)["pending"] == 1
        assert client.xack(stream, group, entry) == 1


def test_redis_kill_keeps_written_entry(fresh_redis_broker: RedisBroker) -> None:
    """appendfsync always: an entry XADD answered survives SIGKILL."""
    stream = unique("requests-")
    with redis_client(fresh_redis_broker) as client:
        entry = client.xadd(stream, {"payload": "synced"})
    fresh_redis_broker.kill()
    assert fresh_redis_broker.survivors() == []
    fresh_redis_broker.start()
    with redis_client(fresh_redis_broker) as client:
        assert client.xrange(stream) == [(entry, {"payload": "synced"})]


# -- RabbitMQ ---------------------------------------------------------------------------------


async def rabbit_publish(url: str, queue_name: str, body: bytes) -> None:
    """Publish a persistent message to a durable queue and wait for the broker's confirm."""
    async with await aio_pika.connect(url, timeout=10) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue_name, durable=True)
        confirmation = await channel.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue_name,
            timeout=10,
        )
        assert isinstance(confirmation, Basic.Ack)


async def rabbit_consume_one(url: str, queue_name: str) -> bytes:
    """basic.consume one message, ack it, and check the queue is empty afterwards."""
    async with await aio_pika.connect(url, timeout=10) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True)

        async def first() -> aio_pika.abc.AbstractIncomingMessage:
            async with queue.iterator() as messages:
                async for message in messages:
                    return message
            raise AssertionError("the consumer ended without a message")

        message = await asyncio.wait_for(first(), timeout=10)
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        await message.ack()
        declared = await channel.declare_queue(queue_name, durable=True, passive=True)
        assert declared.declaration_result.message_count == 0
        return message.body


def test_rabbit_durable_queue_round_trip(rabbit_broker: RabbitBroker) -> None:
    queue = unique("requests-")
    asyncio.run(rabbit_publish(rabbit_broker.url, queue, b"hello"))
    assert asyncio.run(rabbit_consume_one(rabbit_broker.url, queue)) == b"hello"


def test_rabbit_restart_keeps_persistent_message(rabbit_broker: RabbitBroker) -> None:
    queue = unique("requests-")
    asyncio.run(rabbit_publish(rabbit_broker.url, queue, b"kept"))
    commands = " | ".join(cmdline(pid) for pid in rabbit_broker.survivors())
    assert "beam.smp" in commands and "epmd" in commands, commands
    restart_keeps_address(rabbit_broker)  # every old beam.smp, epmd, erl_child_setup is gone
    assert asyncio.run(rabbit_consume_one(rabbit_broker.url, queue)) == b"kept"


def test_rabbit_kill_leaves_nothing(rabbit_broker: RabbitBroker) -> None:
    """SIGKILL ends every process RabbitMQ started (the start script, beam.smp, epmd, ...), and a
    persistent message the broker confirmed survives it."""
    queue = unique("requests-")
    asyncio.run(rabbit_publish(rabbit_broker.url, queue, b"confirmed"))
    rabbit_broker.kill()
    assert rabbit_broker.survivors() == []
    assert marked_processes(rabbit_broker.tag) == []
    rabbit_broker.start()
    assert asyncio.run(rabbit_consume_one(rabbit_broker.url, queue)) == b"confirmed"


# -- NATS JetStream ---------------------------------------------------------------------------


async def nats_publish(url: str, stream: str, body: bytes) -> None:
    client = await nats.connect(url)
    try:
        jetstream = client.jetstream()
        await jetstream.add_stream(name=stream, subjects=[f"{stream}.>"], storage=StorageType.FILE)
        ack = await jetstream.publish(f"{stream}.in", body)
        assert ack.stream == stream and ack.seq == 1
    finally:
        await client.close()


async def nats_fetch_one(url: str, stream: str) -> bytes:
    """Pull-subscribe, fetch one message, ack it, and check the consumer has nothing pending."""
    client = await nats.connect(url)
    try:
        jetstream = client.jetstream()
        subscription = await jetstream.pull_subscribe(f"{stream}.in", durable="workers")
        [message] = await subscription.fetch(1, timeout=10)
        await message.ack_sync()
        info = await jetstream.consumer_info(stream, "workers")
        assert info.num_ack_pending == 0 and info.num_pending == 0
        return message.data
    finally:
        await client.close()


def test_nats_jetstream_round_trip(nats_broker: NatsBroker) -> None:
    stream = unique("REQUESTS_")
    asyncio.run(nats_publish(nats_broker.url, stream, b"hello"))
    assert asyncio.run(nats_fetch_one(nats_broker.url, stream)) == b"hello"


def test_nats_restart_keeps_jetstream_message(nats_broker: NatsBroker) -> None:
    stream = unique("REQUESTS_")
    asyncio.run(nats_publish(nats_broker.url, stream, b"kept"))
    restart_keeps_address(nats_broker)
    assert asyncio.run(nats_fetch_one(nats_broker.url, stream)) == b"kept"


# -- every broker -----------------------------------------------------------------------------


def test_stop_and_kill_leave_nothing(
    fresh_redis_broker: RedisBroker,
    fresh_nats_broker: NatsBroker,
) -> None:
    for broker in (fresh_redis_broker, fresh_nats_broker):
        pids = broker.survivors()
        assert pids == [broker.pid]
        broker.stop()
        assert broker.survivors() == [] and not alive(pids)
        broker.start()
        pids = broker.survivors()
        broker.kill()
        assert broker.survivors() == [] and not alive(pids)
        broker.start()  # the fixture stops it


def test_missing_binary_fails_naming_the_package(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No broker binary on the search path: the fixture fails (it does not skip), naming the
    Debian package."""
    empty = tmp_path_factory.mktemp("empty-path")
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr("tests.brokers.SEARCH_PATH", str(empty))
    for kind, package in ((RedisBroker, "redis-server"), (NatsBroker, "nats-server")):
        with pytest.raises(pytest.fail.Exception, match=f"Debian package {package}"):
            next(started(kind, tmp_path_factory))
