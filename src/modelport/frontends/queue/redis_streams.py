"""Redis Streams: requests are entries of a stream read by a consumer group, replies are entries
of the stream each request names.

An entry is read with XREADGROUP and acknowledged (XACK) only after its reply was added; one a
consumer took and never acknowledged (it died) is claimed by another with XAUTOCLAIM once it has
been idle for the visibility timeout. A retry adds a copy with `attempts` raised and acknowledges
the original in one MULTI transaction, after the delay, so the entry is never lost between the
two; a dead letter is the same with the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from modelport.frontends.queue.client import DeadLetter, OutgoingRequest
from modelport.frontends.queue.contract import QueueRequest, Reply
from modelport.frontends.queue.endpoint import QueueEndpoint
from modelport.frontends.queue.transport import BrokerUnavailable, Delivery, ReplyRefused

REPLY_AND_ACK = """
-- KEYS[1]: the requests stream; KEYS[2..]: one reply stream per reply.
-- ARGV[1]: the group; then 7 values per reply: the request's entry id, then the reply's
-- id, model, version, status, body and header length ('' for a JSON body).
-- Each reply is added, then its request acknowledged and deleted; a reply whose XADD fails
-- (its reply_to names a key that is no stream) leaves its request as it was, and the others
-- go on. Returns, per reply, 1 or the error of its XADD.
local results = {}
for i = 2, #KEYS do
  local at = 2 + (i - 2) * 7
  local entry_id, length = ARGV[at], ARGV[at + 6]
  local added
  if length == '' then
    added = redis.pcall('XADD', KEYS[i], '*', 'id', ARGV[at + 1], 'model', ARGV[at + 2],
      'version', ARGV[at + 3], 'status', ARGV[at + 4], 'content_type', 'application/json',
      'body', ARGV[at + 5])
  else
    added = redis.pcall('XADD', KEYS[i], '*', 'id', ARGV[at + 1], 'model', ARGV[at + 2],
      'version', ARGV[at + 3], 'status', ARGV[at + 4],
      'content_type', 'application/octet-stream', 'body', ARGV[at + 5],
      'inference_header_content_length', length)
  end
  if type(added) == 'table' and added.err then
    results[#results + 1] = added.err
  else
    redis.call('XACK', KEYS[1], ARGV[1], entry_id)
    redis.call('XDEL', KEYS[1], entry_id)
    results[#results + 1] = 1
  end
end
return results
"""
MAX_SETTLED_TOGETHER = 64
"""Replies (with their acknowledgements) sent in one script call at most."""
BLOCK_MS = 1000
SOCKET_SLACK_S = 10.0
Fields = dict[bytes, bytes]


def _text(fields: Fields, name: str) -> str | None:
    value = fields.get(name.encode())
    return None if value is None or value == b"" else value.decode("utf-8", "replace")


@dataclass(eq=False)
class RedisDelivery:
    transport: RedisStreamsTransport
    entry_id: bytes
    fields: Fields
    attempts: int
    request: QueueRequest | None = None
    problem: str = ""
    reply_to: str | None = field(init=False)

    def __post_init__(self) -> None:
        self.reply_to = _text(self.fields, "reply_to")
        body = self.fields.get(b"body")
        if body is None:
            self.problem = "the entry has no 'body' field"
            return
        self.request = QueueRequest(
            body=body,
            message_id=self.entry_id.decode(),
            model=_text(self.fields, "model"),
            version=_text(self.fields, "version"),
            request_id=_text(self.fields, "id"),
            reply_to=self.reply_to,
            content_type=_text(self.fields, "content_type"),
            header_length=_text(self.fields, "inference_header_content_length"),
            traceparent=_text(self.fields, "traceparent"),
        )

    async def ack(self) -> None:
        await self.transport.ack(self.entry_id)

    def _id(self) -> bytes:
        return self.fields.get(b"id") or self.entry_id

    async def retry(self, attempts: int, delay: float) -> None:
        await asyncio.sleep(delay)
        # the copy keeps the request id, which would otherwise be its new entry id
        copy = {**self.fields, b"id": self._id(), b"attempts": str(attempts).encode()}
        await self.transport.move(self.entry_id, self.transport.endpoint.requests, copy)

    async def dead_letter(self, attempts: int, error: str) -> None:
        dead = {
            **self.fields,
            b"id": self._id(),
            b"attempts": str(attempts).encode(),
            b"error": error.encode(),
            b"source_id": self.entry_id,
        }
        await self.transport.move(self.entry_id, self.transport.endpoint.dead, dead)


@dataclass(eq=False, slots=True)
class _Settling:
    """One reply and the acknowledgement of its request, waiting to be sent with others."""

    reply_to: str
    entry_id: bytes
    reply: Reply
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def fail(self, error: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(error)


class RedisStreamsTransport:
    def __init__(self, endpoint: QueueEndpoint) -> None:
        self.endpoint = endpoint
        self._client: redis.Redis | None = None
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self._next_claim = 0.0
        self._claim_cursor = b"0-0"
        self._settling: list[_Settling] = []
        """Replies waiting for the next script call (reply_and_ack)."""
        self._settle_tasks: set[asyncio.Task[None]] = set()

    async def connect(self) -> None:
        # a half-open connection must fail, not hang: reads block BLOCK_MS at most
        client = redis.Redis.from_url(
            self.endpoint.url,
            socket_timeout=BLOCK_MS / 1000 + SOCKET_SLACK_S,
            socket_connect_timeout=SOCKET_SLACK_S,
            health_check_interval=10,
        )
        try:
            await client.ping()
            try:
                await client.xgroup_create(
                    self.endpoint.requests, self.endpoint.group, id="0", mkstream=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise BrokerUnavailable(str(exc)) from exc
        self._client = client
        self._reply_and_ack = client.register_script(REPLY_AND_ACK)

    def _redis(self) -> redis.Redis:
        if self._client is None:
            raise BrokerUnavailable("not connected")
        return self._client

    async def receive(self, max_count: int) -> list[RedisDelivery]:
        client = self._redis()
        try:
            claimed = await self._claim(client, max_count)
            if claimed:
                return claimed
            answer: Any = await client.xreadgroup(
                self.endpoint.group,
                self._consumer,
                {self.endpoint.requests: ">"},
                count=max_count,
                block=BLOCK_MS,
            )
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(str(exc)) from exc
        # RESP2: [[stream, [(id, fields), ...]]]
        entries: list[tuple[bytes, Fields]] = [e for _, stream in answer or [] for e in stream]
        return [self._delivery(entry_id, fields, 0) for entry_id, fields in entries]

    async def _claim(self, client: redis.Redis, max_count: int) -> list[RedisDelivery]:
        """Entries other consumers took and left idle past the visibility timeout (checked every
        quarter of it)."""
        now = time.monotonic()
        if now < self._next_claim:
            return []
        idle_ms = int(self.endpoint.visibility_timeout * 1000)
        answer: Any = await client.xautoclaim(
            self.endpoint.requests,
            self.endpoint.group,
            self._consumer,
            min_idle_time=idle_ms,
            start_id=self._claim_cursor,
            count=max_count,
        )
        cursor, entries = answer[0], answer[1]
        self._claim_cursor = cursor
        if cursor in (b"0-0", "0-0"):
            self._next_claim = now + self.endpoint.visibility_timeout / 4
        deliveries = []
        for entry_id, fields in entries:
            if fields is None:  # deleted while pending
                await client.xack(self.endpoint.requests, self.endpoint.group, entry_id)
                continue
            deliveries.append(self._delivery(entry_id, fields, await self._redelivered(entry_id)))
        return deliveries

    async def _redelivered(self, entry_id: bytes) -> int:
        """How many times the group handed this entry out before (the claim counts as one)."""
        rows = await self._redis().xpending_range(
            self.endpoint.requests, self.endpoint.group, min=entry_id, max=entry_id, count=1
        )
        return max(int(rows[0]["times_delivered"]) - 1, 1) if rows else 1

    def _delivery(self, entry_id: bytes, fields: Fields, redelivered: int) -> RedisDelivery:
        recorded = fields.get(b"attempts", b"0")
        attempts = int(recorded) if recorded.isdigit() else 0
        return RedisDelivery(self, entry_id, fields, attempts + redelivered)

    async def reply(self, reply_to: str, reply: Reply) -> None:
        fields = _reply_fields(reply)
        try:
            await self._redis().xadd(reply_to, fields)  # type: ignore[arg-type]
        except ResponseError as exc:  # e.g. reply_to names a key that is not a stream
            raise ReplyRefused(f"{reply_to}: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(str(exc)) from exc

    async def ack(self, entry_id: bytes) -> None:
        await self.move(entry_id, None, {})

    async def reply_and_ack(self, reply_to: str, reply: Reply, delivery: Delivery) -> None:
        """The reply and the acknowledgement in one step, atomically for this request. Replies
        finished in the same turn of the event loop (a batch the model ran together) go to
        Redis in one script call: one round trip, and one append-only-file write, for all."""
        assert isinstance(delivery, RedisDelivery)
        settling = _Settling(reply_to, delivery.entry_id, reply)
        if not self._settling:
            asyncio.get_running_loop().call_soon(self._settle_waiting)
        self._settling.append(settling)
        await settling.done

    def _settle_waiting(self) -> None:
        waiting, self._settling = self._settling, []
        for start in range(0, len(waiting), MAX_SETTLED_TOGETHER):
            task = asyncio.create_task(self._settle(waiting[start : start + MAX_SETTLED_TOGETHER]))
            self._settle_tasks.add(task)
            task.add_done_callback(self._settle_tasks.discard)

    async def _settle(self, batch: list[_Settling]) -> None:
        keys = [self.endpoint.requests]
        args: list[str | bytes] = [self.endpoint.group]
        for item in batch:
            reply = item.reply
            keys.append(item.reply_to)
            length = "" if reply.header_length is None else str(reply.header_length)
            args += (item.entry_id, reply.request_id, reply.model, reply.version)
            args += (str(reply.status), reply.body, length)
        try:
            results: Any = await self._reply_and_ack(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            for item in batch:
                item.fail(BrokerUnavailable(str(exc)))
            return
        for item, result in zip(batch, results, strict=True):
            if result == 1:
                if not item.done.done():
                    item.done.set_result(None)
            else:  # e.g. reply_to names a key that is not a stream
                text = result.decode() if isinstance(result, bytes) else str(result)
                item.fail(ReplyRefused(f"{item.reply_to}: {text}"))

    async def move(self, entry_id: bytes, stream: str | None, fields: Fields) -> None:
        """Add `fields` to `stream` (if any) and acknowledge and delete the original, all or
        nothing (deleting keeps the requests stream as short as what is unanswered)."""
        requests = self.endpoint.requests
        try:
            async with self._redis().pipeline(transaction=True) as pipe:
                if stream is not None:
                    pipe.xadd(stream, fields)  # type: ignore[arg-type]
                pipe.xack(requests, self.endpoint.group, entry_id)
                pipe.xdel(requests, entry_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(str(exc)) from exc

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


class RedisQueueClient:
    """The client side: XADD requests, XREAD replies from where the last read stopped."""

    def __init__(self, endpoint: QueueEndpoint) -> None:
        self.endpoint = endpoint
        self._client: redis.Redis | None = None
        self._positions: dict[str, bytes] = {}

    async def connect(self) -> None:
        self._client = redis.Redis.from_url(self.endpoint.url)
        await self._client.ping()

    def _redis(self) -> redis.Redis:
        if self._client is None:
            raise BrokerUnavailable("not connected")
        return self._client

    async def send(self, request: OutgoingRequest) -> None:
        await self._redis().xadd(self.endpoint.requests, _request_fields(request))  # type: ignore[arg-type]

    async def send_many(self, requests: Sequence[OutgoingRequest]) -> None:
        """One round trip for all: a pipeline of XADDs (not a transaction: each stands alone)."""
        async with self._redis().pipeline(transaction=False) as pipe:
            for request in requests:
                pipe.xadd(self.endpoint.requests, _request_fields(request))  # type: ignore[arg-type]
            await pipe.execute()

    async def replies(self, reply_to: str, max_count: int, timeout: float) -> list[Reply]:
        start = self._positions.get(reply_to, b"0-0")
        answer: Any = await self._redis().xread(
            {reply_to: start}, count=max_count, block=max(1, int(timeout * 1000))
        )
        entries: list[tuple[bytes, Fields]] = [e for _, stream in answer or [] for e in stream]
        if entries:
            self._positions[reply_to] = entries[-1][0]
        return [_reply(fields) for _, fields in entries]

    async def dead_letters(self) -> list[DeadLetter]:
        entries: Any = await self._redis().xrange(self.endpoint.dead)
        return [
            DeadLetter(
                _text(fields, "id"),
                _text(fields, "error") or "",
                int(fields.get(b"attempts", b"0") or 0),
            )
            for _, fields in entries
        ]

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _request_fields(request: OutgoingRequest) -> dict[str, str | bytes]:
    fields: dict[str, str | bytes] = {
        "id": request.request_id,
        "content_type": request.content_type,
        "body": request.body,
    }
    for key, value in (
        ("model", request.model),
        ("version", request.version),
        ("reply_to", request.reply_to),
    ):
        if value is not None:
            fields[key] = value
    if request.header_length is not None:
        fields["inference_header_content_length"] = str(request.header_length)
    return fields


def _reply_fields(reply: Reply) -> dict[str, str | bytes]:
    fields: dict[str, str | bytes] = {
        "id": reply.request_id,
        "model": reply.model,
        "version": reply.version,
        "status": str(reply.status),
        "content_type": reply.content_type,
        "body": reply.body,
    }
    if reply.header_length is not None:
        fields["inference_header_content_length"] = str(reply.header_length)
    return fields


def _reply(fields: Fields) -> Reply:
    length = _text(fields, "inference_header_content_length")
    return Reply(
        request_id=_text(fields, "id") or "",
        model=_text(fields, "model") or "",
        version=_text(fields, "version") or "",
        status=int(_text(fields, "status") or 0),
        body=fields.get(b"body", b""),
        header_length=int(length) if length else None,
    )
