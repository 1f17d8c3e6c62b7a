"""One queue request, start to finish: decode it as REST would, run it through the data plane,
reply, and settle it (ack, retry later, or dead-letter), whatever the broker. Each delivery gets
one access line (its status: the reply's, or the error's when it is handed back for a retry) and,
when sampled, a trace continuing the message's `traceparent` field."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from modelport.core.data_plane import DataPlane
from modelport.core.errors import InvalidInput, ModelportError, RateLimited, public_error
from modelport.core.tracing import CURRENT_TRACE, ServerTrace
from modelport.core.types import InferResponse
from modelport.core.validate import InputGuard, ValidatedRequest
from modelport.frontends.off_loop import OffLoop
from modelport.frontends.queue.contract import TRANSIENT, QueueRequest, Reply
from modelport.frontends.queue.endpoint import QueueEndpoint
from modelport.frontends.queue.transport import Delivery, ReplyRefused, Transport
from modelport.frontends.rest.v2_codec import (
    OutputFormat,
    decode_request,
    encode_response,
    parse_header_length,
)
from modelport.frontends.status import http_status
from modelport.observability import access_log

log = logging.getLogger("modelport.queue")

MAX_RETRY_DELAY_S = 30.0


class QueueObserver(Protocol):
    """What a queue reports (observability/queue_metrics.py implements it)."""

    def received(self) -> None: ...

    def replied(self, status: int, seconds: float) -> None: ...

    def retried(self) -> None: ...

    def dead_lettered(self) -> None: ...

    def in_flight(self, delta: int) -> None: ...

    def connected(self, up: bool) -> None: ...

    def connection_lost(self) -> None: ...


class _Outcome:
    """What became of a delivery, for its access line and its trace."""

    __slots__ = ("reply",)

    def __init__(self) -> None:
        self.reply: Reply | None = None

    @property
    def status(self) -> int:
        """The reply's status; 500 when none was made (the server stopped meanwhile)."""
        return 500 if self.reply is None else self.reply.status


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

    def retry_delay(self, attempts: int, at_least: float = 0.0) -> float:
        """Seconds before attempt number attempts + 1 (attempts made so far: 1 or more), and at
        least `at_least` (a rate limit's retry_after). Kept under half the visibility timeout, so
        a request waiting out its delay is not handed to another consumer meanwhile."""
        cap = min(MAX_RETRY_DELAY_S, self._endpoint.visibility_timeout / 2)
        backoff = self._endpoint.retry_delay * 2 ** (attempts - 1)
        return float(min(max(backoff, at_least), cap))

    async def process(self, delivery: Delivery) -> float | None:
        """Answer and settle one delivery. Returns the delay before the next attempt when it
        was handed back for one (settled later by `delivery.retry`, which the caller runs),
        else None."""
        started_ns = time.perf_counter_ns()
        request = delivery.request
        trace = None
        tracer = self._plane.tracer
        if tracer is not None and request is not None:
            trace = self._start_trace(request, delivery)
        token = None if trace is None else CURRENT_TRACE.set(trace)
        outcome = _Outcome()
        try:
            return await self._process(delivery, outcome, trace)
        finally:
            if token is not None:
                CURRENT_TRACE.reset(token)
            if trace is not None:
                trace.finish(outcome.status, outcome.status >= 500)
            if access_log.wanted():
                self._log(delivery, outcome, started_ns, trace)

    async def _process(
        self, delivery: Delivery, outcome: _Outcome, trace: ServerTrace | None
    ) -> float | None:
        started = time.perf_counter()
        self._observer.received()
        request = delivery.request
        attempt = delivery.attempts + 1
        if request is None:
            problem = f"the message is not a request: {delivery.problem}"
            reply = outcome.reply = Reply.error("", "", "", 400, problem)
            if delivery.reply_to is None or await self._reply_or_refused(
                delivery.reply_to, reply, started
            ):
                await self._dead_letter(delivery, attempt, problem)
            return None
        reply_to = request.reply_to or self._endpoint.replies
        model = request.model or self._endpoint.model or ""
        version = request.version or self._endpoint.version or ""
        if delivery.attempts >= self._endpoint.max_attempts:
            # handed out this often already without being settled: it may be what kills the
            # server (a poison message), so it is not run again
            problem = f"the request was delivered {delivery.attempts} times without an answer"
            reply = outcome.reply = Reply.error(request.id, model, version, 500, problem)
            await self._settle_dead(delivery, reply_to, reply, attempt, problem, started)
            return None
        try:
            reply = await self._answer(request, trace)
        except Exception as exc:
            error = public_error(exc)
            if not isinstance(exc, ModelportError):
                log.error("unexpected error answering a queue request", exc_info=exc)
            reply = Reply.error(request.id, model, version, http_status(error.kind), error.message)
            outcome.reply = reply
            if error.kind in TRANSIENT:
                if attempt < self._endpoint.max_attempts:
                    self._observer.retried()
                    wait = exc.retry_after if isinstance(exc, RateLimited) else 0.0
                    return self.retry_delay(attempt, wait)
                await self._settle_dead(delivery, reply_to, reply, attempt, error.message, started)
                return None
        outcome.reply = reply
        if not await self._answered(delivery, reply_to, reply, started):
            await self._dead_letter(delivery, attempt, f"the reply to {reply_to} was refused")
        return None

    def _start_trace(self, request: QueueRequest, delivery: Delivery) -> ServerTrace | None:
        tracer = self._plane.tracer
        assert tracer is not None
        endpoint = self._endpoint
        return tracer.start(
            "queue",
            f"process {endpoint.requests}",
            traceparent=request.traceparent,
            tracestate=None,
            request_id=request.id,
            attributes={
                "messaging.system": endpoint.broker,
                "messaging.destination.name": endpoint.requests,
                "messaging.operation.type": "process",
                "messaging.message.id": request.message_id,
                "modelport.delivery.attempt": delivery.attempts + 1,
            },
        )

    def _log(
        self, delivery: Delivery, outcome: _Outcome, started_ns: int, trace: ServerTrace | None
    ) -> None:
        request, reply = delivery.request, outcome.reply
        endpoint = self._endpoint
        model = (request.model if request else None) or endpoint.model
        version = (request.version if request else None) or endpoint.version
        if reply is not None:
            model, version = reply.model or model, reply.version or version
        access_log.record(
            "queue",
            "consume",
            endpoint.requests,
            model,
            version,
            outcome.status,
            time.perf_counter_ns() - started_ns,
            request.id if request is not None else "",
            endpoint.broker,
            None,
            None if trace is None else trace.trace_id,
        )

    async def _answered(
        self, delivery: Delivery, reply_to: str, reply: Reply, started: float
    ) -> bool:
        """Reply and acknowledge; a reply the broker refuses (too large) is replaced by a short
        error reply saying why. False when that is refused too (no such reply queue)."""
        for attempt in (reply, None):
            if attempt is None:
                message = "the reply could not be delivered: the broker refused it"
                attempt = Reply.error(reply.request_id, reply.model, reply.version, 500, message)
            try:
                await self._transport.reply_and_ack(reply_to, attempt, delivery)
            except ReplyRefused as exc:
                log.warning("a queue reply to %s was refused: %s", reply_to, exc)
                continue
            self._observer.replied(attempt.status, time.perf_counter() - started)
            return True
        return False

    async def _settle_dead(
        self,
        delivery: Delivery,
        reply_to: str,
        reply: Reply,
        attempt: int,
        error: str,
        started: float,
    ) -> None:
        """The error reply (if the broker takes it), then the dead letters."""
        await self._reply_or_refused(reply_to, reply, started)
        await self._dead_letter(delivery, attempt, error)

    async def _dead_letter(self, delivery: Delivery, attempt: int, error: str) -> None:
        await delivery.dead_letter(attempt, error)
        self._observer.dead_lettered()

    async def _reply_or_refused(
        self, reply_to: str, reply: Reply, started: float, *, fallback: bool = False
    ) -> bool:
        """Publish a reply; False when the broker refused it (no such reply queue, too large).
        With `fallback`, a refused reply is replaced by a short error reply saying why, so the
        client still learns the request's fate."""
        try:
            await self._transport.reply(reply_to, reply)
        except ReplyRefused as exc:
            log.warning("a queue reply to %s was refused: %s", reply_to, exc)
            if not fallback:
                return False
            message = f"the reply could not be delivered: {exc}"
            small = Reply.error(reply.request_id, reply.model, reply.version, 500, message)
            return await self._reply_or_refused(reply_to, small, started)
        self._observer.replied(reply.status, time.perf_counter() - started)
        return True

    async def _answer(self, request: QueueRequest, trace: ServerTrace | None) -> Reply:
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
        if trace is not None:
            trace.encoded(time.perf_counter_ns())
        return Reply(request_id, answered.model_name, answered.model_version, 200, payload, header)
