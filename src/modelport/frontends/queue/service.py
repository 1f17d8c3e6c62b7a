"""Every --queue of a server: a consumer per queue, started once the models are loaded and
stopped (draining what is in flight) before the data plane closes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from modelport.core.data_plane import DataPlane, IndexRow
from modelport.frontends.off_loop import OffLoop
from modelport.frontends.queue.consumer import QueueConsumer
from modelport.frontends.queue.endpoint import QueueEndpoint
from modelport.frontends.queue.processor import QueueObserver, QueueProcessor
from modelport.frontends.queue.transport import Transport

log = logging.getLogger("modelport.queue")

ObserverFor = Callable[[str], QueueObserver]


def transport_for(endpoint: QueueEndpoint) -> Transport:
    """The broker's transport; its client library is imported only when a queue uses it."""
    if endpoint.broker == "redis":
        from modelport.frontends.queue.redis_streams import RedisStreamsTransport

        return RedisStreamsTransport(endpoint)
    if endpoint.broker == "rabbitmq":
        from modelport.frontends.queue.rabbitmq import RabbitTransport

        return RabbitTransport(endpoint)
    from modelport.frontends.queue.nats_jetstream import NatsTransport

    return NatsTransport(endpoint)


def queue_label(endpoint: QueueEndpoint) -> str:
    return f"{endpoint.safe_url} {endpoint.requests}"


class QueueService:
    def __init__(
        self,
        plane: DataPlane,
        endpoints: tuple[QueueEndpoint, ...],
        observer_for: ObserverFor,
        off_loop: OffLoop,
    ) -> None:
        self._consumers: list[QueueConsumer] = []
        for endpoint in endpoints:
            transport = transport_for(endpoint)
            observer = observer_for(queue_label(endpoint))
            processor = QueueProcessor(plane, transport, endpoint, observer, off_loop)
            self._consumers.append(QueueConsumer(endpoint, transport, processor, observer))
        self._tasks: list[asyncio.Task[None]] = []
        if self._consumers:
            plane.add_status_rows(self.status_rows)

    def start(self) -> None:
        for consumer in self._consumers:
            task = asyncio.create_task(consumer.run(), name=f"queue {consumer.endpoint.requests}")
            self._tasks.append(task)

    def stop_reading(self) -> None:
        for consumer in self._consumers:
            consumer.stop()

    async def stop(self) -> None:
        """Stop reading; returns once every request in flight is answered and settled."""
        self.stop_reading()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def status_rows(self) -> list[IndexRow]:
        """One repository-index row per queue: READY while connected, else why not."""
        return [
            {
                "name": f"queue {queue_label(consumer.endpoint)}",
                "state": "READY" if consumer.connected else "UNAVAILABLE",
                "reason": "" if consumer.connected else consumer.last_error or "connecting",
            }
            for consumer in self._consumers
        ]
