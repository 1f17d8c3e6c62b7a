"""One queue request, start to finish: decode it as REST would, run it through the data plane,
reply, and settle it (ack, retry later, or dead-letter), whatever the broker."""

from __future__ import annotations

import logging
import time
from typing import Protocol

import orjson

from modelport.core.data_plane import DataPlane
from modelport.core.errors import InvalidInput, ModelportError, public_error
from modelport.core.types import InferResponse
from modelport.core.validate import InputGuard, ValidatedRequest
from modelport.frontends.queue.contract import TRANSIENT, QueueRequest, Reply
from modelport.frontends.queue.endpoint import QueueEndpoint
from modelport.frontends.queue.transport import Delivery, ReplyRefused, Transport
from modelport.frontends.rest.off_loop import OffLoop
from modelport.frontends.rest.v2_codec import (
    OutputFormat,
    decode_request,
    encode_response,
    parse_header_length,
)
from modelport.frontends.status import http_status

log = logging.getLogger("modelport.queue")

MAX_RETRY_DELAY_S = 30.0


class QueueObserver(Protocol):
    """What a queue reports (observability.metrics implements it)."""

    def received(self) -> None: ...

    def replied(self, status: int, seconds: float) -> None: ...

    def retried(self) -> None: ...

    def dead_lettered(self) -> None: ...

    def in_flight(self, delta: int) -> None: ...

    def connected(self, up: bool) -> None: ...


class QueueProcessor:
    def __init__(
        self,
        plane: DataPlane,
        transport: Transport,
        endpoint: QueueEndpoint,
        observer: QueueObserver,
        off_loop: OffLoop,
    ) -> None:
        self._plane = plane
        self._transport = transport
        self._endpoint = endpoint
        self._observer = observer
        self._off_loop = off_loop

    def retry_delay(self, attempts: int) -> float:
        """Seconds before attempt number attempts + 1 (attempts made so far: 1 or more)."""
        return float(min(self._endpoint.retry_delay * 2 ** (attempts - 1), MAX_RETRY_DELAY_S))

    async def process(self, delivery: Delivery) -> bool:
        """Answer and settle one delivery. Returns True when it was handed back for another
        attempt (settled later by `delivery.retry`, which the caller runs)."""
        started = time.perf_counter()
        self._observer.received()
        request = delivery.request
        attempt = delivery.attempts + 1
        if request is None:
            problem = f"the message is not a request: {delivery.problem}"
            if delivery.reply_to is not None:
                await self._reply(
                    delivery.reply_to, _error_reply("", "", "", 400, problem), started
                )
            await delivery.dead_letter(attempt, problem)
            self._observer.dead_lettered()
            return False
        reply_to = request.reply_to or self._endpoint.replies
        try:
            reply = await self._answer(request)
        except Exception as exc:
            error = public_error(exc)
            if not isinstance(exc, ModelportError):
                log.error("unexpected error answering queue request %s", request.id, exc_info=exc)
            model = request.model or self._endpoint.model or ""
            version = request.version or self._endpoint.version or ""
            reply = _error_reply(request.id, model, version, http_status(error.kind), error.message)
            if error.kind in TRANSIENT:
                if attempt < self._endpoint.max_attempts:
                    self._observer.retried()
                    return True
                if await self._reply_or_dead_letter(delivery, reply_to, reply, started):
                    await delivery.dead_letter(attempt, error.message)
                    self._observer.dead_lettered()
                return False
        if await self._reply_or_dead_letter(delivery, reply_to, reply, started):
            await delivery.ack()
        return False

    async def _reply(self, reply_to: str, reply: Reply, started: float) -> None:
        await self._transport.reply(reply_to, reply)
        self._observer.replied(reply.status, time.perf_counter() - started)

    async def _reply_or_dead_letter(
        self, delivery: Delivery, reply_to: str, reply: Reply, started: float
    ) -> bool:
        """Reply; a reply the broker refuses sends the request to the dead letters (it could
        never be answered, and coming back would only fail again). False when it went there."""
        try:
            await self._reply(reply_to, reply, started)
        except ReplyRefused as exc:
            log.warning("queue request %s: its reply to %s was refused", reply.request_id, reply_to)
            await delivery.dead_letter(delivery.attempts + 1, f"the reply was refused: {exc}")
            self._observer.dead_lettered()
            return False
        return True

    async def _answer(self, request: QueueRequest) -> Reply:
        model = request.model or self._endpoint.model
        if not model:
            raise InvalidInput(
                "the message names no model (field 'model') and the queue is bound to none "
                "(?model= in its URL)"
            )
        version = request.version or self._endpoint.version
        body = request.body
        header_length = parse_header_length(request.header_length, len(body))
        output_format = OutputFormat()

        async def decode(guard: InputGuard) -> ValidatedRequest:
            nonlocal output_format
            args = (body, header_length, guard, model, version)
            validated, output_format = await self._off_loop.run_if_large(
                len(body), decode_request, *args
            )
            return validated

        response = await self._plane.infer(self._plane.resolve(model, version), decode)
        request_id = request.request_id or response.id or request.message_id
        answered = InferResponse(
            response.model_name, response.model_version, response.outputs, request_id
        )
        size = sum(array.nbytes for array in answered.outputs.values())
        payload, header = await self._off_loop.run_if_large(
            size, encode_response, answered, output_format
        )
        return Reply(request_id, answered.model_name, answered.model_version, 200, payload, header)


def _error_reply(request_id: str, model: str, version: str, status: int, message: str) -> Reply:
    return Reply(request_id, model, version, status, orjson.dumps({"error": message}))
