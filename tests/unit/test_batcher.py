from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from modelport.core.batcher import BatchResult, DynamicBatcher
from modelport.core.errors import DeadlineExceeded, InvalidInput, ModelNotReady, ServerBusy
from modelport.core.runtime import Signature
from modelport.runtimes import executor
from modelport.runtimes.executor import ThreadHost

Infer = Callable[[dict[str, np.ndarray], Any], dict[str, np.ndarray]]


class FunctionModel:
    """A LoadedModel around a plain function, so batches run on a real ThreadHost."""

    def __init__(self, infer: Infer) -> None:
        self.infer = infer

    def signature(self) -> Signature:
        return Signature((), ())

    def close(self) -> None:
        pass


def threads(infer: Infer, instances: int = 1) -> ThreadHost:
    return ThreadHost([FunctionModel(infer)], instances, "test")


GIVE_UP_SECS = 60.0
"""A gated model stops waiting for its gate, and a test for what should come at once, after this
long: a failing test ends instead of hanging. Nothing passes or fails by it."""


class Recorder:
    """A model that doubles its input and records every batch it was given. With a gate, each
    run waits for the gate to open; `entered` is set once a run has started."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[int] = []
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, inputs: dict[str, np.ndarray], outputs: Any) -> dict[str, np.ndarray]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(GIVE_UP_SECS)
        x = inputs["x"]
        self.batches.append(x.shape[0])
        return {"y": x * 2, "n": np.full((x.shape[0],), x.shape[0])}


def make(run: Infer, **options: Any) -> DynamicBatcher:
    executions: list[tuple[int, int]] = []
    options.setdefault("batched", True)
    batcher = DynamicBatcher(
        "test model",
        threads(run, options.get("instances", 1)).run,
        on_execution=lambda size, ns: executions.append((size, ns)),
        **options,
    )
    batcher.executions = executions  # type: ignore[attr-defined]
    return batcher


def rows(value: float, count: int, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.full((count, width), value, dtype=np.float32)}


async def running(model: Recorder) -> None:
    """Return once a run of the model has started (it is then blocked on its gate)."""
    await asyncio.to_thread(model.entered.wait, GIVE_UP_SECS)
    assert model.entered.is_set()


async def queued(batcher: DynamicBatcher, count: int) -> None:
    """Let the tasks just created run up to their wait in the queue (no time passes: sleep(0)
    only yields to the tasks that are ready)."""
    for _ in range(10):
        if batcher.queued >= count:
            return
        await asyncio.sleep(0)
    assert batcher.queued == count


def test_concurrent_requests_share_a_run_and_get_their_own_rows() -> None:
    async def main() -> None:
        run = Recorder()
        batcher = make(run, max_batch_size=64, max_queue_delay=0.05)
        sizes = [1, 2, 3, 1, 4, 1, 2]
        results = await asyncio.gather(
            *(batcher.submit(rows(i, size), None) for i, size in enumerate(sizes))
        )
        for i, (size, result) in enumerate(zip(sizes, results, strict=True)):
            np.testing.assert_array_equal(result.outputs["y"], np.full((size, 3), 2 * i))
        assert run.batches == [sum(sizes)]
        assert batcher.executions[0][0] == sum(sizes)  # type: ignore[attr-defined]
        await batcher.close()

    asyncio.run(main())


def test_shapes_that_differ_beyond_the_batch_dim_are_never_mixed() -> None:
    async def main() -> None:
        run = Recorder()
        batcher = make(run, max_batch_size=64, max_queue_delay=0.05)
        results = await asyncio.gather(
            batcher.submit(rows(1, 2, width=3), None),
            batcher.submit(rows(2, 1, width=5), None),
            batcher.submit(rows(3, 1, width=3), None),
        )
        assert sorted(run.batches) == [1, 3]
        assert results[1].outputs["y"].shape == (1, 5)
        await batcher.close()

    asyncio.run(main())


def test_max_batch_size_caps_each_run() -> None:
    async def main() -> None:
        run = Recorder()
        batcher = make(run, max_batch_size=4, max_queue_delay=0.05)
        await asyncio.gather(*(batcher.submit(rows(i, 1), None) for i in range(10)))
        assert run.batches == [4, 4, 2]
        await batcher.close()

    asyncio.run(main())


def test_preferred_size_dispatches_without_waiting_for_the_delay() -> None:
    async def main() -> None:
        run = Recorder()
        # a delay no test run reaches: the batch can only go because it reached size 4
        batcher = make(run, max_batch_size=64, max_queue_delay=3600.0, preferred_batch_sizes=(4,))
        first = [asyncio.ensure_future(batcher.submit(rows(i, 1), None)) for i in range(3)]
        await queued(batcher, 3)
        for _ in range(10):  # the scheduler runs, and waits: 3 is no preferred size
            await asyncio.sleep(0)
        assert run.batches == [] and batcher.queued == 3
        last = batcher.submit(rows(3, 1), None)
        results = await asyncio.wait_for(asyncio.gather(*first, last), GIVE_UP_SECS)
        assert run.batches == [4]
        assert [float(r.outputs["y"][0, 0]) for r in results] == [0, 2, 4, 6]
        await batcher.close()

    asyncio.run(main())


def test_unbatched_models_run_each_request_alone() -> None:
    async def main() -> None:
        run = Recorder()
        batcher = make(run, batched=False, max_batch_size=64)
        await asyncio.gather(*(batcher.submit(rows(i, 2), None) for i in range(3)))
        assert run.batches == [2, 2, 2]
        await batcher.close()

    asyncio.run(main())


def test_full_queue_refuses_at_once_and_timeouts_drop_queued_requests() -> None:
    async def main() -> None:
        gate = threading.Event()
        run = Recorder(gate=gate)
        batcher = make(run, max_batch_size=1, max_queue_size=2)
        first = asyncio.ensure_future(batcher.submit(rows(0, 1), None))
        await running(run)  # the first request is now running, blocked on the gate
        waiting = asyncio.ensure_future(batcher.submit(rows(1, 1), None))
        expiring = asyncio.ensure_future(batcher.submit(rows(2, 1), None, timeout=0.05))
        await asyncio.sleep(0)  # both enter the queue; the timer can fire only after this
        assert batcher.queued == 2
        with pytest.raises(ServerBusy, match="queue is full"):
            await batcher.submit(rows(3, 1), None)
        with pytest.raises(DeadlineExceeded, match="timed out after 50 ms"):
            await expiring
        assert batcher.queued == 1 and not waiting.done()  # the gate is still closed
        gate.set()
        assert (await first).outputs["y"][0, 0] == 0
        assert (await waiting).outputs["y"][0, 0] == 2
        assert run.batches == [1, 1]  # the expired request never ran
        await batcher.close()

    asyncio.run(main())


def test_cancelled_callers_leave_the_queue() -> None:
    async def main() -> None:
        gate = threading.Event()
        run = Recorder(gate=gate)
        batcher = make(run, max_batch_size=1)
        first = asyncio.ensure_future(batcher.submit(rows(0, 1), None))
        await running(run)
        gone = asyncio.ensure_future(batcher.submit(rows(1, 1), None))
        await queued(batcher, 1)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert batcher.queued == 0
        gate.set()
        await first
        assert run.batches == [1]
        await batcher.close()

    asyncio.run(main())


def test_outputs_that_do_not_split_make_each_member_run_alone() -> None:
    calls: list[int] = []

    def broken(inputs: dict[str, np.ndarray], outputs: Any) -> dict[str, np.ndarray]:
        calls.append(inputs["x"].shape[0])
        return {"y": np.zeros((1,), np.float32)}

    async def main() -> None:
        batcher = make(broken, max_batch_size=8, max_queue_delay=0.05)
        results = await asyncio.gather(*(batcher.submit(rows(i, 1), None) for i in range(3)))
        assert calls == [3, 1, 1, 1]
        assert all(r.outputs["y"].shape == (1,) for r in results)
        await batcher.close()

    asyncio.run(main())


def test_one_bad_member_does_not_fail_the_others() -> None:
    def picky(inputs: dict[str, np.ndarray], outputs: Any) -> dict[str, np.ndarray]:
        if (inputs["x"] < 0).any():
            raise InvalidInput("negative values are not allowed")
        return {"y": inputs["x"] * 2}

    async def main() -> None:
        batcher = make(picky, max_batch_size=8, max_queue_delay=0.05)
        good, bad, other = await asyncio.gather(
            batcher.submit(rows(1, 2), None),
            batcher.submit(rows(-1, 1), None),
            batcher.submit(rows(3, 1), None),
            return_exceptions=True,
        )
        assert isinstance(bad, InvalidInput)
        assert isinstance(good, BatchResult) and isinstance(other, BatchResult)
        np.testing.assert_array_equal(good.outputs["y"], np.full((2, 3), 2))
        np.testing.assert_array_equal(other.outputs["y"], np.full((1, 3), 6))
        await batcher.close()

    asyncio.run(main())


def test_close_fails_what_is_queued_and_refuses_new_requests() -> None:
    async def main() -> None:
        gate = threading.Event()
        model = Recorder(gate=gate)
        batcher = make(model, max_batch_size=1)
        first = asyncio.ensure_future(batcher.submit(rows(0, 1), None))
        await running(model)
        waiting = asyncio.ensure_future(batcher.submit(rows(1, 1), None))
        await queued(batcher, 1)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.wait([waiting])  # failed by close while the first still runs
        with pytest.raises(ModelNotReady, match="unloading"):
            await batcher.submit(rows(2, 1), None)
        assert not closing.done() and not first.done()  # close waits for the running batch
        gate.set()
        await closing
        assert (await first).outputs["y"].shape == (1, 3)
        with pytest.raises(ModelNotReady, match="unloaded"):
            await waiting
        assert model.batches == [1]

    asyncio.run(main())


@pytest.mark.parametrize(("reported_ns", "expected"), [(5_000_000, 2), (50_000, 1)])
def test_slow_models_get_one_batch_queued_ahead_of_a_free_instance(
    reported_ns: int, expected: int
) -> None:
    """With one instance, a model whose runs take >= 1 ms has a second batch handed over while
    the first runs; a fast one never has more than one batch out."""

    async def main() -> None:
        out, most, gate = [0], [0], asyncio.Event()

        async def run(
            inputs: dict[str, np.ndarray], wanted: Any
        ) -> tuple[dict[str, np.ndarray], int]:
            out[0] += 1
            most[0] = max(most[0], out[0])
            await gate.wait()
            out[0] -= 1
            return {"y": inputs["x"]}, reported_ns

        batcher = DynamicBatcher("test", run, batched=True, max_batch_size=2, instances=1)
        gate.set()
        for _ in range(3):  # warm the moving average of compute time
            await batcher.submit(rows(0, 1), None)
        gate.clear()
        most[0] = 0
        waiting = [asyncio.ensure_future(batcher.submit(rows(i, 1), None)) for i in range(6)]
        for _ in range(5):
            await asyncio.sleep(0)
        assert most[0] == expected
        gate.set()
        results = await asyncio.gather(*waiting)
        assert [float(r.outputs["y"][0, 0]) for r in results] == [0, 1, 2, 3, 4, 5]
        await batcher.close()

    asyncio.run(main())


class ModelClock:
    """Stands in for the `time` module of the thread host: its perf_counter_ns moves only when
    a model run says how long it took, so how long a run "takes" does not depend on the machine."""

    def __init__(self) -> None:
        self.ns = 0

    def perf_counter_ns(self) -> int:
        return self.ns

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_runs_shorter_than_a_thread_handoff_run_on_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host runs a fast model on the loop's own thread once it has seen its runs are short;
    slow models, and models with several copies, always run on instance threads."""
    clock = ModelClock()
    monkeypatch.setattr(executor, "time", clock)

    def thread_names(run_ns: int, copies: int) -> list[str]:
        seen: list[str] = []

        def infer(inputs: dict[str, np.ndarray], outputs: Any) -> dict[str, np.ndarray]:
            seen.append(threading.current_thread().name)
            clock.ns += run_ns  # what the host measures for this run
            return {"y": inputs["x"]}

        host = ThreadHost([FunctionModel(infer) for _ in range(copies)], copies, "test")

        async def main() -> None:
            for _ in range(20):
                await host.run(rows(0, 1), None)

        asyncio.run(main())
        host.close()
        return seen

    fast_ns, slow_ns = executor.INLINE_MAX_NS // 10, 2 * executor.INLINE_MAX_NS
    loop_thread = threading.current_thread().name  # asyncio.run runs the loop on this thread
    fast = thread_names(fast_ns, copies=1)
    assert fast[0] != loop_thread  # not measured yet: an instance thread
    assert fast[-10:] == [loop_thread] * 10  # its runs were measured short: on the loop
    assert loop_thread not in thread_names(slow_ns, copies=1)
    assert loop_thread not in thread_names(fast_ns, copies=2)  # borrowing a copy could block
