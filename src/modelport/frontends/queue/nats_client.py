"""The client side of NATS JetStream (nats_jetstream.py): sending requests, reading replies
and dead letters, and plain synchronous requests, for `modelport queue send`, the tests and the
benchmark."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from modelport.frontends.queue.client import DeadLetter, OutgoingRequest
from modelport.frontends.queue.contract import Reply
from modelport.frontends.queue.endpoint import QueueEndpoint
from modelport.frontends.queue.nats_jetstream import (
    API_TIMEOUT_S,
    ATTEMPTS,
    ERROR,
    ID,
    MSG_ID,
    REPLY_READER_IDLE_S,
    close_connection,
    connect,
    declare_streams,
    header,
    reply_from,
    request_headers,
    stream_of,
    sync_subject,
    unavailable,
)
from modelport.frontends.queue.transport import (
    BrokerUnavailable,
    describe,
)


class _ReplyReader:
    """Replies on one subject, each read once: an ephemeral consumer on the stream that captures
    the subject, from where the last read stopped; or, for a subject no stream captures, a core
    subscription (which sees only what is published after it was made)."""

    def __init__(self, js: JetStreamContext, nc: NATS, subject: str, stream: str | None) -> None:
        self._js, self._nc = js, nc
        self.subject, self.stream = subject, stream
        self._position = 0
        """The stream sequence of the last reply read."""
        self._pull: JetStreamContext.PullSubscription | None = None
        self._consumer = ""
        self._core: Subscription | None = None

    async def read(self, max_count: int, timeout: float) -> list[Reply]:
        if self.stream is None:
            return await self._read_core(max_count, timeout)
        if self._pull is None:
            await self._open(self.stream)
        assert self._pull is not None
        try:
            msgs = await self._pull.fetch(max_count, timeout=max(timeout, 0.001))
        except TimeoutError:
            if not await self._consumer_exists(self.stream):  # gone idle, or a broker restart
                await self._drop()
            return []
        replies = []
        for msg in msgs:
            sequence = msg.metadata.sequence.stream
            if sequence > self._position:
                self._position = sequence
                replies.append(reply_from(msg.headers, msg.data))
        return replies

    async def _open(self, stream: str) -> None:
        start = self._position + 1
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE
            if start > 1
            else api.DeliverPolicy.ALL,
            opt_start_seq=start if start > 1 else None,
            ack_policy=api.AckPolicy.NONE,  # the position above is what makes each read once
            filter_subject=self.subject,
            inactive_threshold=REPLY_READER_IDLE_S,
        )
        info = await self._js.add_consumer(stream, config)
        self._consumer = info.name
        self._pull = await self._js.pull_subscribe_bind(info.name, stream=stream)

    async def _consumer_exists(self, stream: str) -> bool:
        try:
            await self._js.consumer_info(stream, self._consumer)
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def _drop(self) -> None:
        pull, self._pull = self._pull, None
        if pull is not None:
            with contextlib.suppress(Exception):
                await pull.unsubscribe()

    async def _read_core(self, max_count: int, timeout: float) -> list[Reply]:
        if self._core is None:
            self._core = await self._nc.subscribe(self.subject)
        replies: list[Reply] = []
        try:
            msg = await self._core.next_msg(timeout=max(timeout, 0.001))
        except TimeoutError:
            return replies
        replies.append(reply_from(msg.headers, msg.data))
        while len(replies) < max_count and self._core.pending_msgs > 0:
            msg = await self._core.next_msg(timeout=0.001)
            replies.append(reply_from(msg.headers, msg.data))
        return replies

    async def close(self) -> None:
        await self._drop()
        if self.stream is not None and self._consumer:
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(self.stream, self._consumer)
        core, self._core = self._core, None
        if core is not None:
            with contextlib.suppress(Exception):
                await core.unsubscribe()


class NatsQueueClient:
    """The client side: JetStream publishes of requests, replies read through ephemeral
    consumers, dead letters read by sequence, and `request_sync` for a synchronous answer."""

    def __init__(self, endpoint: QueueEndpoint) -> None:
        self.endpoint = endpoint
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._readers: dict[str, _ReplyReader] = {}

    async def connect(self) -> None:
        nc = await connect(self.endpoint, "modelport-client", reconnect=True)
        try:
            js = nc.jetstream(timeout=API_TIMEOUT_S)
            with unavailable(f"declaring stream {self.endpoint.stream}"):
                await declare_streams(js, self.endpoint)
        except BaseException:
            await close_connection(nc)
            raise
        self._nc, self._js = nc, js

    def _connection(self) -> tuple[NATS, JetStreamContext]:
        if self._nc is None or self._js is None:
            raise BrokerUnavailable("not connected")
        return self._nc, self._js

    async def send(self, request: OutgoingRequest) -> None:
        """Publish a request; returns once the stream has stored it. A request id sent again
        within the duplicate window is stored once (that is what makes a re-send safe)."""
        _, js = self._connection()
        with unavailable(f"sending request {request.request_id}"):
            await js.publish(
                self.endpoint.requests,
                request.body,
                timeout=API_TIMEOUT_S,
                headers=request_headers(request),
            )

    async def send_many(self, requests: Sequence[OutgoingRequest]) -> None:
        """All published at once; each still waits for its own confirmation."""
        await asyncio.gather(*(self.send(request) for request in requests))

    async def replies(self, reply_to: str, max_count: int, timeout: float) -> list[Reply]:
        nc, js = self._connection()
        with unavailable(f"reading replies on {reply_to}"):
            reader = self._readers.get(reply_to)
            if reader is None:
                reader = _ReplyReader(js, nc, reply_to, await stream_of(js, reply_to))
                self._readers[reply_to] = reader
            return await reader.read(max_count, timeout)

    async def dead_letters(self) -> list[DeadLetter]:
        _, js = self._connection()
        letters: list[DeadLetter] = []
        with unavailable(f"reading dead letters on {self.endpoint.dead}"):
            stream = await stream_of(js, self.endpoint.dead)
            sequence = 1
            while stream is not None:
                try:
                    msg = await js.get_msg(
                        stream, seq=sequence, subject=self.endpoint.dead, next=True
                    )
                except nats.js.errors.NotFoundError:
                    break
                headers = msg.headers or {}
                attempts = header(headers, ATTEMPTS) or "0"
                letters.append(
                    DeadLetter(
                        header(headers, MSG_ID) or header(headers, ID),
                        header(headers, ERROR) or "",
                        int(attempts) if attempts.isdigit() else 0,
                    )
                )
                sequence = (msg.seq or sequence) + 1
        return letters

    async def request_sync(self, request: OutgoingRequest, timeout: float) -> Reply:
        """Send a request on the synchronous subject and wait for its reply (core NATS: at most
        once; on a timeout, whether it was answered is unknown)."""
        nc, _ = self._connection()
        subject = sync_subject(self.endpoint)
        try:
            msg = await nc.request(
                subject, request.body, timeout=timeout, headers=request_headers(request)
            )
        except nats.errors.NoRespondersError as exc:
            raise BrokerUnavailable(f"no modelport server serves {subject}") from exc
        except TimeoutError as exc:
            raise TimeoutError(f"no reply on {subject} within {timeout:g} s") from exc
        except nats.errors.Error as exc:
            raise BrokerUnavailable(f"requesting on {subject}: {describe(exc)}") from exc
        return reply_from(msg.headers, msg.data)

    async def close(self) -> None:
        readers, self._readers = self._readers, {}
        for reader in readers.values():
            await reader.close()
        nc, self._nc, self._js = self._nc, None, None
        await close_connection(nc)
