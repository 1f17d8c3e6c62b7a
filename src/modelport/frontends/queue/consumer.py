"""One queue's consumer loop: connect (again, with backoff, when the broker goes away), take
requests only as fast as slots free up, and on stop finish what is in flight before closing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from modelport.frontends.queue.endpoint import QueueEndpoint
from modelport.frontends.queue.processor import QueueObserver, QueueProcessor
from modelport.frontends.queue.transport import Delivery, Transport, describe

log = logging.getLogger("modelport.queue")

RECONNECT_FIRST_S = 0.2
RECONNECT_MAX_S = 10.0
RECEIVE_AT_MOST = 8
"""Requests taken from the broker in one read. Small reads let the next ones be decoded while
the model runs the first, so a burst is not handled all in step, server then broker then client:
Redis at 32 in flight, reads of at most 8, 16 and 64 gave 6,283, 5,645 and 4,757 replies/s (and
4 gave 2,263: too many round trips), benchmarks/queues.py."""
DRAIN_TIMEOUT_S = 30.0
"""How long a stop waits for the requests in flight; what is left stays on the broker."""


class QueueConsumer:
    def __init__(
        self,
        endpoint: QueueEndpoint,
        transport: Transport,
        processor: QueueProcessor,
        observer: QueueObserver,
    ) -> None:
        self.endpoint = endpoint
        self._transport = transport
        self._processor = processor
        self._observer = observer
        self._stopping = asyncio.Event()
        self._working: set[asyncio.Task[None]] = set()
        """Requests being answered: at most max_in_flight."""
        self._waiting: set[asyncio.Task[None]] = set()
        """Requests handed back for a later attempt, waiting out their delay."""
        self.connected = False
        self.last_error = ""

    async def run(self) -> None:
        """Consume until stop(); a lost connection is retried with backoff meanwhile."""
        delay = RECONNECT_FIRST_S
        while not self._stopping.is_set():
            try:
                await self._transport.connect()
                self._set_connected(True, "")
                log.info("consuming %s from %s", self.endpoint.requests, self.endpoint.safe_url)
                delay = RECONNECT_FIRST_S
                await self._consume()
            except Exception as exc:  # any broker client error: reconnect, keep serving
                self._set_connected(False, describe(exc))
                self._observer.connection_lost()
                log.warning(
                    "queue %s %s: %s; reconnecting in %.1f s",
                    self.endpoint.safe_url,
                    self.endpoint.requests,
                    self.last_error,
                    delay,
                )
                await self._abandon()
                with contextlib.suppress(Exception):
                    await self._transport.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
        await self._finish()

    def stop(self) -> None:
        """Stop taking requests; run() returns once those in flight are answered and settled."""
        self._stopping.set()

    async def _consume(self) -> None:
        limit = self.endpoint.max_in_flight
        stopped = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                await self._receive_some(limit, stopped)
        finally:
            stopped.cancel()

    async def _receive_some(self, limit: int, stopped: asyncio.Future[Any]) -> None:
        # requests waiting out a retry delay count too, so neither set grows without bound
        busy: set[asyncio.Future[Any]] = {*self._working, *self._waiting}
        if len(busy) >= limit:
            await asyncio.wait({*busy, stopped}, return_when=asyncio.FIRST_COMPLETED)
            return
        for delivery in await self._transport.receive(min(limit - len(busy), RECEIVE_AT_MOST)):
            self._start(delivery)

    def _start(self, delivery: Delivery) -> None:
        self._observer.in_flight(1)
        task = asyncio.create_task(self._answer(delivery))
        self._working.add(task)
        task.add_done_callback(self._working.discard)

    async def _answer(self, delivery: Delivery) -> None:
        try:
            delay = await self._processor.process(delivery)
        except Exception as exc:  # the broker went away mid-answer: the message stays unsettled
            log.warning("queue %s: a request stays on the broker: %s", self.endpoint.requests, exc)
            return
        finally:
            self._observer.in_flight(-1)
        if delay is not None:
            attempts = delivery.attempts + 1
            task = asyncio.create_task(self._retry(delivery, attempts, delay))
            self._waiting.add(task)
            task.add_done_callback(self._waiting.discard)

    async def _retry(self, delivery: Delivery, attempts: int, delay: float) -> None:
        try:
            await delivery.retry(attempts, delay)
        except Exception as exc:
            log.warning("queue %s: a retry stays on the broker: %s", self.endpoint.requests, exc)

    async def _abandon(self) -> None:
        """The connection is gone: what is in flight can no longer be settled on it (the broker
        hands those messages out again), so stop working on them instead of letting them hold
        their slots (a publish confirm on a dead channel may never come)."""
        tasks = [*self._working, *self._waiting]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _finish(self) -> None:
        """Answer what is in flight; requests waiting for a retry stay unsettled on the broker,
        which hands them out again (to this server after a restart, or to another)."""
        if self._working:  # bounded: a broker that stopped answering cannot hold the stop
            _, late = await asyncio.wait(self._working, timeout=DRAIN_TIMEOUT_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._working, return_exceptions=True)
        for task in list(self._waiting):
            task.cancel()
        if self._waiting:
            await asyncio.gather(*self._waiting, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._transport.close()
        self._set_connected(False, "stopped")

    def _set_connected(self, up: bool, error: str) -> None:
        self.connected, self.last_error = up, error
        self._observer.connected(up)
