"""The per-version scheduler: a queue, Triton-style dynamic batching, and instance concurrency.

Every request to a model version goes through its DynamicBatcher. Requests whose inputs agree on
every dimension but the first are joined along dimension 0 into one run of the model (never mixing
shapes), and the outputs are split back. A batch is dispatched as soon as it is full, as soon as it
reaches the largest preferred size it can, or when its oldest request has waited max_queue_delay.
At most `instances` batches run at once, each on a worker thread; while all are busy the queue
grows, so batches get bigger exactly when the model is the bottleneck. For a model whose batches
take a while (QUEUE_AHEAD_MIN_NS) one more batch is handed over while all instances are busy, so
a finishing instance starts its next batch at once instead of waiting for the event loop to form
it. A model without batching has max_batch_size 1 here: each request runs alone, with the same
queue limit and timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from modelport.core.errors import (
    DeadlineExceeded,
    InferenceFailed,
    ModelNotReady,
    ModelportError,
    ServerBusy,
)
from modelport.core.stats import MovingAverage
from modelport.core.tracing import TracedRun

log = logging.getLogger("modelport.batcher")

Arrays = dict[str, np.ndarray]
RunBatch = Callable[[Arrays, tuple[str, ...] | None], Awaitable[tuple[Arrays, int]]]
"""Runs one batch off the event loop; returns the outputs and the compute time in ns."""
ExecutionHook = Callable[[int, int], None]
"""Called after each run of the model with (batch size, compute ns)."""

QUEUE_AHEAD_MIN_NS = 1_000_000
"""Batches of models whose runs take at least this long (moving average) are formed one ahead of
a free instance. It hides the event loop's handoff between two batches (cnn at c=32: +11-14 %);
for faster models it would only split batches (mlp: -7 %). benchmarks/results, session 5."""


@dataclass(frozen=True, slots=True)
class BatchResult:
    outputs: Arrays
    queue_ns: int
    infer_ns: int


@dataclass(eq=False, slots=True)
class _Pending:
    inputs: Arrays
    outputs: tuple[str, ...] | None
    key: tuple[object, ...]
    size: int
    future: asyncio.Future[BatchResult]
    trace: TracedRun | None = None
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)
    dispatched: bool = False


class DynamicBatcher:
    def __init__(
        self,
        label: str,
        run: RunBatch,
        *,
        batched: bool,
        max_batch_size: int = 1,
        max_queue_delay: float = 0.0,
        preferred_batch_sizes: tuple[int, ...] = (),
        max_queue_size: int | None = None,
        instances: int = 1,
        on_execution: ExecutionHook | None = None,
    ) -> None:
        self._label = label
        self._run = run
        self._batched = batched
        self._max = max_batch_size if batched else 1
        self._delay_ns = int(max_queue_delay * 1e9) if batched else 0
        self._preferred = sorted(size for size in preferred_batch_sizes if size <= self._max)
        self._max_queue = max_queue_size
        self._on_execution = on_execution
        self._instances = instances
        self._dispatched = 0  # batches handed to the host: running, or queued there
        self._slot_freed = asyncio.Event()
        self._run_time = MovingAverage()
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(
        self,
        inputs: Arrays,
        outputs: tuple[str, ...] | None,
        timeout: float | None = None,
        trace: TracedRun | None = None,
    ) -> BatchResult:
        """`trace`: the request's run when it is traced (core/tracing.py)."""
        if self._closed:
            raise ModelNotReady(f"{self._label} is unloading")
        if self._max_queue is not None and len(self._queue) >= self._max_queue:
            raise ServerBusy(f"{self._label}: the queue is full ({self._max_queue} requests)")
        loop = asyncio.get_running_loop()
        pending = _Pending(
            inputs,
            outputs,
            _shape_key(inputs),
            _batch_size(inputs, self._batched),
            loop.create_future(),
            trace,
        )
        self._queue.append(pending)
        self._arrived.set()
        if self._scheduler is None:
            self._scheduler = loop.create_task(self._schedule(), name=f"batcher {self._label}")
        timer = None
        if timeout is not None:
            timer = loop.call_later(timeout, self._expire, pending, timeout)
        try:
            return await pending.future
        finally:
            if timer is not None:
                timer.cancel()
            if not pending.dispatched and pending in self._queue:
                self._queue.remove(pending)  # the caller went away while it was queued

    def _expire(self, pending: _Pending, timeout: float) -> None:
        if pending.dispatched or pending.future.done():
            return
        with contextlib.suppress(ValueError):
            self._queue.remove(pending)
        pending.future.set_exception(
            DeadlineExceeded(f"{self._label}: timed out after {timeout * 1000:g} ms in the queue")
        )

    async def _schedule(self) -> None:
        while not self._closed:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._dispatch_slot()
            try:
                limit = await self._batch_limit()
                batch = self._take(limit)
            except BaseException:
                self._release_slot()
                raise
            if not batch:
                self._release_slot()
                continue
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _dispatch_slot(self) -> None:
        """Wait until a batch may be handed to the host: an instance is free, or one more may
        queue there because this model's runs are long enough to be worth it."""
        while self._dispatched >= self._instances + (self._run_time.ns >= QUEUE_AHEAD_MIN_NS):
            self._slot_freed.clear()
            await self._slot_freed.wait()
        self._dispatched += 1

    def _release_slot(self) -> None:
        self._dispatched -= 1
        self._slot_freed.set()

    async def _batch_limit(self) -> int:
        """Wait until the batch at the head of the queue should go; return its size limit."""
        while True:
            self._drop_finished()
            if not self._queue:
                return self._max
            head = self._queue[0]
            available = sum(p.size for p in self._queue if p.key == head.key)
            if available >= self._max:
                return self._max
            reachable = [size for size in self._preferred if size <= available]
            if reachable:
                return reachable[-1]
            remaining_ns = head.enqueued_ns + self._delay_ns - time.perf_counter_ns()
            if remaining_ns <= 0:
                return self._max
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining_ns / 1e9)
            except TimeoutError:
                return self._max

    def _drop_finished(self) -> None:
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()

    def _take(self, limit: int) -> list[_Pending]:
        self._drop_finished()
        if not self._queue:
            return []
        key = self._queue[0].key
        batch, total = [], 0
        for pending in self._queue:
            if pending.key != key or pending.future.done() or total + pending.size > limit:
                continue
            batch.append(pending)
            total += pending.size
            if total == limit:
                break
        for pending in batch:
            pending.dispatched = True
            self._queue.remove(pending)
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        try:
            await self._run_together([p for p in batch if not p.future.done()])
        except Exception as exc:
            live = [p for p in batch if not p.future.done()]
            if len(live) == 1:
                _fail(live, _as_error(self._label, exc))
            # One member's bad data must not fail the others: run each alone.
            for pending in live if len(live) > 1 else ():
                try:
                    await self._run_together([pending])
                except Exception as single:
                    _fail([pending], _as_error(self._label, single))
        finally:
            self._release_slot()

    async def _run_together(self, members: list[_Pending]) -> None:
        """One run of the model on the members' inputs joined along dim 0; each gets its rows."""
        if not members:
            return
        started = time.perf_counter_ns()
        traced = _any_traced(members)
        inputs = _concatenate([p.inputs for p in members])
        wanted = _union([p.outputs for p in members])
        try:
            outputs, infer_ns = await self._run(inputs, wanted)
        except Exception as exc:
            if traced:
                _trace_batch(members, started, 0, _error_text(exc))
            raise
        ran = time.perf_counter_ns() if traced else 0
        self._run_time.add(infer_ns)
        sizes = [p.size for p in members]
        parts = _split(self._label, outputs, sizes) if len(members) > 1 else [outputs]
        if self._on_execution is not None:
            self._on_execution(sum(sizes), infer_ns)
        for pending, part in zip(members, parts, strict=True):
            if not pending.future.done():
                queue_ns = started - pending.enqueued_ns
                pending.future.set_result(BatchResult(part, queue_ns, infer_ns))
        if traced:
            _trace_batch(members, started, infer_ns, None, ran)

    async def close(self) -> None:
        """Refuse new requests, let running batches finish, fail what is still queued."""
        self._closed = True
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
        _fail(list(self._queue), ModelNotReady(f"{self._label} was unloaded"))
        self._queue.clear()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


def _any_traced(members: list[_Pending]) -> bool:
    for pending in members:  # noqa: SIM110 (a loop: no generator made per batch)
        if pending.trace is not None:
            return True
    return False


def _trace_batch(
    members: list[_Pending],
    started_ns: int,
    compute_ns: int,
    error: str | None,
    ran_ns: int = 0,
) -> None:
    """Each traced member's queue wait, and one batch span on the first traced member."""
    runs = []
    for pending in members:
        if pending.trace is not None:
            pending.trace.queued(pending.enqueued_ns, started_ns)
            runs.append(pending.trace)
    end_ns = ran_ns or time.perf_counter_ns()
    size = sum(p.size for p in members)
    runs[0].batched(runs, started_ns, end_ns, compute_ns, size, error)


def _error_text(exc: Exception) -> str:
    return exc.message if isinstance(exc, ModelportError) else f"{type(exc).__name__}: {exc}"


def _shape_key(inputs: Arrays) -> tuple[object, ...]:
    return tuple((name, array.dtype.str, array.shape[1:]) for name, array in sorted(inputs.items()))


def _batch_size(inputs: Arrays, batched: bool) -> int:
    if not batched:
        return 1
    return int(next(iter(inputs.values())).shape[0])


def _concatenate(parts: list[Arrays]) -> Arrays:
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _union(wanted: list[tuple[str, ...] | None]) -> tuple[str, ...] | None:
    if any(names is None for names in wanted):
        return None
    return tuple(dict.fromkeys(name for names in wanted for name in names or ()))


def _split(label: str, outputs: Arrays, sizes: list[int]) -> list[Arrays]:
    total = sum(sizes)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise InferenceFailed(
                f"{label}: output '{name}' has shape {list(array.shape)}, which does not split "
                f"back into a batch of {total}"
            )
    bounds = np.cumsum([0, *sizes])
    return [
        {name: array[start:end] for name, array in outputs.items()}
        for start, end in itertools.pairwise(bounds)
    ]


def _as_error(label: str, exc: Exception) -> ModelportError:
    if isinstance(exc, ModelportError):
        return exc
    log.error("%s raised while running", label, exc_info=exc)
    # the type a worker process's exception stands for, where it could not travel itself
    kind = getattr(exc, "original_type", None) or type(exc).__name__
    return InferenceFailed(f"{label} failed: {kind}: {exc}")


def _fail(batch: list[_Pending], error: ModelportError) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(error)
