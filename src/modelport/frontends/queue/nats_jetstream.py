"""NATS JetStream: requests are messages of a stream read through a durable pull consumer (the
group), replies are published to the subject each request names.

Requests live in the stream `endpoint.stream` (work-queue retention, file storage) on the subject
`endpoint.requests`, with the headers `model`, `version`, `Nats-Msg-Id` (the request id, which
JetStream also uses to drop a re-sent duplicate within its duplicate window, two minutes by
default), `reply-to`, `content-type`, `inference-header-content-length` and `traceparent`. The
durable pull consumer `endpoint.group` acknowledges explicitly; a message not acknowledged within
`ack_wait` is delivered again, to this server or another of the group, and JetStream counts the
deliveries (across restarts of the server and of ours), which is where `attempts` comes from. A
retry is a NAK with a delay: the broker holds the message and delivers it again after the delay.

Replies go with a JetStream publish (so the PubAck says the broker stored them) when a stream
captures their subject, else with a core-NATS publish and a flush; the default reply subject gets
a stream of its own at connect, f"{stream}_REPLIES", and the dead letters f"{stream}_DEAD".

Synchronous callers use `nc.request` on f"{endpoint.requests}.sync", a core-NATS subject the
stream does not capture (a core request to a captured subject is answered by the stream's PubAck,
not by us). Those requests are at most once: see `NatsSyncDelivery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from modelport.frontends.queue.client import OutgoingRequest
from modelport.frontends.queue.contract import QueueRequest, Reply
from modelport.frontends.queue.endpoint import QueueEndpoint
from modelport.frontends.queue.transport import (
    BrokerUnavailable,
    Delivery,
    ReplyRefused,
    describe,
)

log = logging.getLogger("modelport.queue")

FETCH_TIMEOUT_S = 1.0
API_TIMEOUT_S = 5.0
"""JetStream API calls, JetStream publishes and synchronous acks."""
CONNECT_TIMEOUT_S = 5
FLUSH_TIMEOUT_S = 5
LOOKUP_TTL_S = 10.0
"""How long a reply subject's stream (or the lack of one) is remembered."""
MIN_ACK_PENDING = 1000
REPLY_MAX_AGE_S = 7 * 86_400.0
ERROR_HEADER_MAX = 2000
SYNC_SUFFIX = ".sync"
SYNC_BACKLOG_MIN = 256
REPLY_READER_IDLE_S = 3600.0
CONSUMER_CHECK_S = 10.0
RECONNECT_ATTEMPTS = 120
RECONNECT_WAIT_S = 0.5

# Header names. All lower case but Nats-Msg-Id: nats-py reads a "Status: 503" header as "no
# responders", so a reply's status must not be spelled "Status".
MODEL = "model"
VERSION = "version"
MSG_ID = "Nats-Msg-Id"
ID = "id"
REPLY_TO = "reply-to"
CONTENT_TYPE = "content-type"
HEADER_LENGTH = "inference-header-content-length"
TRACEPARENT = "traceparent"
STATUS = "status"
ERROR = "error"
ATTEMPTS = "attempts"
SOURCE_SEQUENCE = "source-sequence"

Headers = Mapping[str, str]


class JetStreamSetupError(RuntimeError):
    """The streams or the consumer an endpoint names exist in a shape it cannot use (the
    message names them and says what to change); nothing was changed on the broker."""


def sync_subject(endpoint: QueueEndpoint) -> str:
    """The core-NATS subject of synchronous requests (`nc.request`)."""
    return endpoint.requests + SYNC_SUFFIX


def replies_stream(endpoint: QueueEndpoint) -> str:
    return f"{endpoint.stream}_REPLIES"


def dead_stream(endpoint: QueueEndpoint) -> str:
    return f"{endpoint.stream}_DEAD"


def header(headers: Headers, name: str) -> str | None:
    value = headers.get(name)
    return value or None


def _valid_subject(subject: str) -> bool:
    tokens = subject.split(".")
    return all(t and not any(c in t for c in " \t\r\n*>") for t in tokens)


@contextlib.contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Broker client errors as BrokerUnavailable (TimeoutError, and so nats' timeouts, is an
    OSError)."""
    try:
        yield
    except (nats.errors.Error, OSError) as exc:
        raise BrokerUnavailable(f"{what}: {describe(exc)}") from exc


async def connect(endpoint: QueueEndpoint, name: str, reconnect: bool) -> NATS:
    """One attempt to connect (a failure raises BrokerUnavailable at once); after that the
    client reconnects by itself, the transport does not (its consumer does, with backoff)."""
    up = False

    async def on_error(exc: Exception) -> None:
        # nats-py's default logs a traceback for every lost connection; a failed connect is
        # reported by what we raise
        if up:
            log.warning("nats %s: %s", endpoint.safe_url, describe(exc))

    try:
        # nats-py tries each server max_reconnect_attempts + 1 times even on the first connect
        # (0 means forever), so the first connect gets two quick tries
        nc = await nats.connect(
            endpoint.url,
            name=name,
            connect_timeout=CONNECT_TIMEOUT_S,
            error_cb=on_error,
            allow_reconnect=reconnect,
            reconnect_time_wait=RECONNECT_WAIT_S,
            max_reconnect_attempts=1,
        )
    except (nats.errors.Error, OSError) as exc:
        raise BrokerUnavailable(f"cannot connect to {endpoint.safe_url}: {describe(exc)}") from exc
    up = True
    nc.options["max_reconnect_attempts"] = RECONNECT_ATTEMPTS  # read at each reconnect
    return nc


async def close_connection(nc: NATS | None) -> None:
    """Flush (acks and NAKs not yet written reach the server) and close; quietly, whatever state
    the connection is in. Not drain(): it waits for every subscription's queue to be read, and
    a pull subscription's can hold an expired fetch's status message nobody reads."""
    if nc is None or nc.is_closed:
        return
    with contextlib.suppress(Exception):
        await nc.flush(timeout=FLUSH_TIMEOUT_S)
    with contextlib.suppress(Exception):
        await nc.close()


def _matches(pattern: str, subject: str) -> bool:
    """Whether a stream subject (`*` one token, `>` the rest) captures `subject`."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or token not in ("*", tokens[index]):
            return False
    return len(wanted) == len(tokens)


async def stream_of(js: JetStreamContext, subject: str) -> str | None:
    try:
        return await js.find_stream_name_by_subject(subject)
    except nats.js.errors.NotFoundError:
        return None


async def declare_streams(js: JetStreamContext, endpoint: QueueEndpoint) -> dict[str, str]:
    """Create what is missing: the requests stream, and streams for the default replies and the
    dead letters unless a stream captures them already. Returns {subject: stream} for those."""
    await _declare_requests(js, endpoint)
    found: dict[str, str] = {}
    for subject, name, max_age in (
        (endpoint.replies, replies_stream(endpoint), REPLY_MAX_AGE_S),
        (endpoint.dead, dead_stream(endpoint), None),
    ):
        existing = await stream_of(js, subject)
        if existing is None:
            config = api.StreamConfig(
                name=name,
                subjects=[subject],
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
                max_age=max_age,
            )
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                raise JetStreamSetupError(
                    f"cannot create stream {name} for {subject!r}: {exc.description}"
                ) from exc
            existing = name
        found[subject] = existing
    return found


async def _declare_requests(js: JetStreamContext, endpoint: QueueEndpoint) -> None:
    name, subject, sync = endpoint.stream, endpoint.requests, sync_subject(endpoint)
    try:
        info = await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        config = api.StreamConfig(
            name=name,
            subjects=[subject],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.WORK_QUEUE,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            other = await stream_of(js, subject)
            if other is not None and other != name:
                raise JetStreamSetupError(
                    f"cannot create stream {name}: stream {other} already captures {subject!r} "
                    f"(use ?stream={other}, or other names)"
                ) from exc
            raise JetStreamSetupError(
                f"cannot create stream {name} for {subject!r}: {exc.description}"
            ) from exc
    else:
        subjects = info.config.subjects or []
        if not any(_matches(s, subject) for s in subjects) or any(
            _matches(s, sync) for s in subjects
        ):
            raise JetStreamSetupError(
                f"stream {name} exists with subjects {subjects}: it must capture {subject!r} "
                f"and not {sync!r} (the synchronous requests); it was left as it is, so pick "
                "another ?stream= or change or delete that stream"
            )
    other = await stream_of(js, sync)
    if other is not None:
        log.warning(
            "stream %s captures %s: synchronous requests will be answered by its PubAck "
            "before modelport can answer them",
            other,
            sync,
        )


def request_headers(request: OutgoingRequest) -> dict[str, str]:
    headers = {MSG_ID: request.request_id, CONTENT_TYPE: request.content_type}
    for key, value in ((MODEL, request.model), (VERSION, request.version)):
        if value is not None:
            headers[key] = value
    if request.reply_to is not None:
        headers[REPLY_TO] = request.reply_to
    if request.header_length is not None:
        headers[HEADER_LENGTH] = str(request.header_length)
    return headers


def _queue_request(
    body: bytes, message_id: str, headers: Headers, reply_to: str | None
) -> QueueRequest:
    return QueueRequest(
        body=body,
        message_id=message_id,
        model=header(headers, MODEL),
        version=header(headers, VERSION),
        request_id=header(headers, MSG_ID) or header(headers, ID),
        reply_to=reply_to,
        content_type=header(headers, CONTENT_TYPE) or header(headers, "content_type"),
        # the contract's field name, as the other brokers spell it, is accepted too
        header_length=header(headers, HEADER_LENGTH)
        or header(headers, "inference_header_content_length"),
        traceparent=header(headers, TRACEPARENT),
    )


def _reply_headers(reply: Reply) -> dict[str, str]:
    headers = {
        ID: reply.request_id,
        MODEL: reply.model,
        VERSION: reply.version,
        STATUS: str(reply.status),
        CONTENT_TYPE: reply.content_type,
    }
    if reply.header_length is not None:
        headers[HEADER_LENGTH] = str(reply.header_length)
    return headers


def reply_from(headers: Headers | None, body: bytes) -> Reply:
    headers = headers or {}
    length = header(headers, HEADER_LENGTH)
    status = header(headers, STATUS) or "0"
    return Reply(
        request_id=header(headers, ID) or "",
        model=header(headers, MODEL) or "",
        version=header(headers, VERSION) or "",
        status=int(status) if status.isdigit() else 0,
        body=body,
        header_length=int(length) if length and length.isdigit() else None,
    )


def _dead_headers(headers: Headers, attempts: int, error: str) -> dict[str, str]:
    # Nats-Expected-* and the like were meant for the original publish and could refuse this one;
    # Nats-Msg-Id stays, so a message dead-lettered twice (its ack lost) is stored once.
    kept = {k: v for k, v in headers.items() if not k.startswith("Nats-") or k == MSG_ID}
    kept[ERROR] = error[:ERROR_HEADER_MAX]
    kept[ATTEMPTS] = str(attempts)
    return kept


def _error_reply(headers: Headers, status: int, message: str) -> Reply:
    request_id = header(headers, MSG_ID) or header(headers, ID) or ""
    model, version = header(headers, MODEL) or "", header(headers, VERSION) or ""
    return Reply.error(request_id, model, version, status, message)


class NatsDelivery:
    """A request from the stream, leased to this server until it is settled or `ack_wait`
    passes (then JetStream delivers it again)."""

    def __init__(self, js: JetStreamContext, endpoint: QueueEndpoint, msg: Msg) -> None:
        self._js = js  # the connection it came on: its ack must go back the same way
        self._endpoint = endpoint
        self._msg = msg
        self._headers: Headers = msg.headers or {}
        metadata = msg.metadata
        self.sequence = metadata.sequence.stream
        self.attempts = max(metadata.num_delivered - 1, 0)
        self.problem = ""
        self.reply_to = header(self._headers, REPLY_TO)
        self.request: QueueRequest | None = _queue_request(
            msg.data, str(self.sequence), self._headers, self.reply_to
        )

    async def ack(self) -> None:
        # ack_sync waits for the server's answer, so an ack that did not reach the broker is
        # an error here (the request will come back) rather than a silent redelivery later.
        with unavailable(f"acknowledging message {self.sequence}"):
            await self._msg.ack_sync(timeout=API_TIMEOUT_S)

    async def retry(self, attempts: int, delay: float) -> None:
        # JetStream holds the message and delivers it again (num_delivered + 1) after the delay;
        # a lost NAK only means it comes back after ack_wait instead.
        with unavailable(f"handing message {self.sequence} back"):
            await self._msg.nak(delay=delay)

    async def dead_letter(self, attempts: int, error: str) -> None:
        headers = _dead_headers(self._headers, attempts, error)
        headers[SOURCE_SEQUENCE] = str(self.sequence)
        with unavailable(f"dead-lettering message {self.sequence}"):
            await self._js.publish(
                self._endpoint.dead, self._msg.data, timeout=API_TIMEOUT_S, headers=headers
            )
            await self._msg.ack_sync(timeout=API_TIMEOUT_S)

    async def nak_now(self) -> None:
        """Hand back a message that was fetched but never started (the server is stopping)."""
        with contextlib.suppress(Exception):
            await self._msg.nak()


class NatsSyncDelivery:
    """A synchronous request (`nc.request` on the .sync subject): core NATS, at most once.

    Nothing on the broker holds it: a server that stops or dies before answering leaves the
    caller to its own timeout, and the caller is the one to send it again. The reply goes to the
    message's own reply subject with a core publish and a flush; `ack` has nothing to tell the
    broker. `retry` keeps the request in this server's memory and hands it to `receive` again
    after the delay, so the processor's retries and its attempt limit apply as on the stream
    (the caller waits for them); a request still waiting when the server stops is answered with
    a 503 at once. `dead_letter` records it in the dead letters like any other.
    """

    def __init__(self, transport: NatsTransport, msg: Msg) -> None:
        self._transport = transport
        self._msg = msg
        self._headers: Headers = msg.headers or {}
        self.attempts = 0
        self.problem = ""
        self.reply_to = msg.reply or header(self._headers, REPLY_TO)
        message_id = f"sync-{uuid.uuid4().hex}"
        self.request: QueueRequest | None = _queue_request(
            msg.data, message_id, self._headers, self.reply_to
        )

    async def ack(self) -> None:
        """The reply was flushed to the server already; there is nothing else to settle."""

    async def retry(self, attempts: int, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            await self.refuse(
                503, f"the server stopped before attempt {attempts + 1}; send it again"
            )
            raise
        self.attempts = attempts
        self._transport.requeue(self)

    async def dead_letter(self, attempts: int, error: str) -> None:
        await self._transport.dead_letter_sync(self._msg, attempts, error)

    async def refuse(self, status: int, message: str) -> None:
        """Answer at once with an error reply, best effort (the caller may be gone)."""
        if self.reply_to is not None:
            with contextlib.suppress(Exception):
                await self._transport.reply(
                    self.reply_to, _error_reply(self._headers, status, message)
                )


class NatsTransport:
    def __init__(self, endpoint: QueueEndpoint, ack_wait: float | None = None) -> None:
        self.endpoint = endpoint
        self.ack_wait = endpoint.visibility_timeout if ack_wait is None else ack_wait
        """Seconds a fetched request may stay unacknowledged before JetStream delivers it again
        (the endpoint's visibility_timeout unless given)."""
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._pull: JetStreamContext.PullSubscription | None = None
        self._sync_sub: Subscription | None = None
        self._fetching: asyncio.Task[list[Msg]] | None = None
        self._fetched: deque[NatsDelivery] = deque()
        """Fetched while every slot was busy: handed out first by the next receive()."""
        self._sync: deque[NatsSyncDelivery] = deque()
        self._sync_arrived = asyncio.Event()
        self._sync_backlog = max(SYNC_BACKLOG_MIN, 4 * endpoint.max_in_flight)
        self._direct: set[str] = set()
        """Reply subjects of synchronous requests not answered yet: core publish, no lookup."""
        self._streams: dict[str, tuple[str | None, float]] = {}
        self.consumer_check_s = CONSUMER_CHECK_S
        """While idle, how often to check that the group's consumer still exists."""
        self._consumer_checked = 0.0

    @property
    def max_ack_pending(self) -> int:
        # The group's limit, over all its servers; each server's own share is bounded by what
        # it fetches (max_in_flight), and requests waiting out a NAK delay count here too.
        return max(MIN_ACK_PENDING, 8 * self.endpoint.max_in_flight)

    async def connect(self) -> None:
        await self.close()
        endpoint = self.endpoint
        nc = await connect(endpoint, "modelport", reconnect=False)
        try:
            js = nc.jetstream(timeout=API_TIMEOUT_S)
            with unavailable(f"declaring stream {endpoint.stream} on {endpoint.safe_url}"):
                found = await declare_streams(js, endpoint)
                config = api.ConsumerConfig(
                    name=endpoint.group,
                    durable_name=endpoint.group,
                    deliver_policy=api.DeliverPolicy.ALL,
                    ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=self.ack_wait,
                    max_deliver=-1,  # attempts are counted by the processor, not capped here
                    max_ack_pending=self.max_ack_pending,
                    filter_subject=endpoint.requests,
                )
                try:
                    await js.add_consumer(endpoint.stream, config)
                except nats.js.errors.BadRequestError as exc:
                    raise JetStreamSetupError(
                        f"cannot create or update consumer {endpoint.group} on stream "
                        f"{endpoint.stream}: {exc.description}"
                    ) from exc
                pull = await js.pull_subscribe_bind(durable=endpoint.group, stream=endpoint.stream)
                sync_sub = await nc.subscribe(
                    sync_subject(endpoint), queue=endpoint.group, cb=self._on_sync
                )
                await nc.flush(timeout=CONNECT_TIMEOUT_S)
        except BaseException:
            await close_connection(nc)
            raise
        self._nc, self._js, self._pull, self._sync_sub = nc, js, pull, sync_sub
        self._streams = {subject: (stream, math.inf) for subject, stream in found.items()}

    def _connected(self) -> tuple[NATS, JetStreamContext, JetStreamContext.PullSubscription]:
        nc, js, pull = self._nc, self._js, self._pull
        if nc is None or js is None or pull is None:
            raise BrokerUnavailable("not connected")
        if nc.is_closed or not nc.is_connected:
            raise BrokerUnavailable(f"the connection to {self.endpoint.safe_url} was lost")
        return nc, js, pull

    async def receive(self, max_count: int) -> list[Delivery]:
        """Fetched stream messages first, then synchronous requests; waits (a second at most)
        for whichever comes first."""
        _, js, pull = self._connected()
        if not self._fetched and self._fetching is None:
            self._fetching = asyncio.create_task(self._fetch(pull, max_count))
        if not self._fetched and not self._sync:
            self._sync_arrived.clear()
            arrived = asyncio.create_task(self._sync_arrived.wait())
            try:
                await asyncio.wait(
                    {self._fetching, arrived} if self._fetching else {arrived},
                    timeout=FETCH_TIMEOUT_S * 2,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                arrived.cancel()
        if self._fetching is not None and self._fetching.done():
            task, self._fetching = self._fetching, None
            with unavailable(f"fetching from {self.endpoint.stream}"):
                msgs = task.result()
            self._fetched.extend(NatsDelivery(js, self.endpoint, msg) for msg in msgs)
        self._connected()  # a fetch that timed out may have been a connection that went away
        out: list[Delivery] = []
        while self._fetched and len(out) < max_count:
            out.append(self._fetched.popleft())
        while self._sync and len(out) < max_count:
            out.append(self._sync.popleft())
        return out

    async def _fetch(self, pull: JetStreamContext.PullSubscription, count: int) -> list[Msg]:
        try:
            return await pull.fetch(count, timeout=FETCH_TIMEOUT_S)
        except TimeoutError:  # nats' timeouts are TimeoutErrors
            pass
        # A fetch from a consumer (or stream) deleted under us times out like an idle one: look
        # now and then, so that the consumer loop reconnects, which declares them again.
        now = time.monotonic()
        if now - self._consumer_checked >= self.consumer_check_s:
            self._consumer_checked = now
            try:
                await pull.consumer_info()
            except nats.js.errors.NotFoundError as exc:
                raise BrokerUnavailable(
                    f"consumer {self.endpoint.group} of stream {self.endpoint.stream} is gone"
                ) from exc
        return []

    async def _on_sync(self, msg: Msg) -> None:
        delivery = NatsSyncDelivery(self, msg)
        if delivery.reply_to is not None and msg.reply:
            self._direct.add(delivery.reply_to)
        if len(self._sync) >= self._sync_backlog:
            await delivery.refuse(
                503, "too many synchronous requests are waiting at this server; send it again"
            )
            return
        self._sync.append(delivery)
        self._sync_arrived.set()

    def requeue(self, delivery: NatsSyncDelivery) -> None:
        """A synchronous request back for another attempt (held in memory: see its class)."""
        self._sync.append(delivery)
        self._sync_arrived.set()

    async def reply(self, reply_to: str, reply: Reply) -> None:
        nc, js, _ = self._connected()
        headers = _reply_headers(reply)
        size = len(reply.body) + sum(len(k) + len(v) + 4 for k, v in headers.items()) + 16
        if size > nc.max_payload:  # it would never fit: refused, not redelivered forever
            raise ReplyRefused(
                f"the reply of about {size} bytes exceeds the server's max_payload of "
                f"{nc.max_payload}"
            )
        if not _valid_subject(reply_to):
            raise ReplyRefused(f"{reply_to!r} is not a valid NATS subject")
        with unavailable(f"publishing a reply to {reply_to}"):
            stream = None
            if reply_to in self._direct:
                self._direct.discard(reply_to)
            else:
                stream = await self._stream_for(js, reply_to)
            if stream is None:
                await nc.publish(reply_to, reply.body, headers=headers)
                await nc.flush(timeout=FLUSH_TIMEOUT_S)
            else:
                await js.publish(reply_to, reply.body, timeout=API_TIMEOUT_S, headers=headers)

    async def _stream_for(self, js: JetStreamContext, subject: str) -> str | None:
        now = time.monotonic()
        cached = self._streams.get(subject)
        if cached is not None and cached[1] > now:
            return cached[0]
        stream = await stream_of(js, subject)
        if len(self._streams) > 10_000:  # per-client reply subjects: keep the cache bounded
            self._streams = {k: v for k, v in self._streams.items() if v[1] > now}
        self._streams[subject] = (stream, now + LOOKUP_TTL_S)
        return stream

    async def dead_letter_sync(self, msg: Msg, attempts: int, error: str) -> None:
        _, js, _ = self._connected()
        headers = _dead_headers(msg.headers or {}, attempts, error)
        with unavailable("dead-lettering a synchronous request"):
            await js.publish(self.endpoint.dead, msg.data, timeout=API_TIMEOUT_S, headers=headers)

    async def reply_and_ack(self, reply_to: str, reply: Reply, delivery: Delivery) -> None:
        await self.reply(reply_to, reply)
        await delivery.ack()

    async def close(self) -> None:
        """Stop fetching, hand back what was fetched but not started, answer waiting synchronous
        requests with a 503, then close the connection. Safe to call again and after a failure."""
        fetching, self._fetching = self._fetching, None
        if fetching is not None:
            fetching.cancel()
            await asyncio.gather(fetching, return_exceptions=True)
        sync_sub, self._sync_sub = self._sync_sub, None
        if sync_sub is not None:
            with contextlib.suppress(Exception):
                await sync_sub.unsubscribe()
        while self._fetched:
            await self._fetched.popleft().nak_now()
        while self._sync:
            await self._sync.popleft().refuse(503, "the server is stopping; send it again")
        nc, self._nc, self._js, self._pull = self._nc, None, None, None
        self._direct.clear()
        self._streams.clear()
        await close_connection(nc)
