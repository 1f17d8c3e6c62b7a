"""The repository poller against a fake source and manager, its waits ended on demand by a test
clock: no real sleeps, and nothing here depends on how fast the machine is."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from modelport.core.errors import ModelNotFound
from modelport.repository.poller import RepositoryPoller

INTERVAL, SETTLE = 10.0, 1.0


class FakeSource:
    """Model names and fingerprints the test sets; `broken` makes the next scans raise."""

    def __init__(self, **models: str) -> None:
        self.models = dict(models)
        self.broken = False

    def model_names(self) -> list[str]:
        if self.broken:
            raise OSError("the repository is unreadable")
        return sorted(self.models)

    def model_fingerprint(self, name: str) -> str:
        return self.models.get(name, "")


class FakeManager:
    """Records every call; a name in `missing` makes sync raise ModelNotFound."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.missing: set[str] = set()

    async def sync(self, name: str) -> list[str]:
        self.calls.append(("sync", name))
        if name in self.missing:
            raise ModelNotFound(f"unknown model '{name}'")
        return []

    async def remove(self, name: str) -> None:
        self.calls.append(("remove", name))


class Clock:
    """A sleep for the poller that waits until the test ends it. `during_settle` runs while the
    poller waits out its settle time (what a writer does to the directory meanwhile)."""

    def __init__(self) -> None:
        self.waits: asyncio.Queue[tuple[float, asyncio.Future[None]]] = asyncio.Queue()
        self.during_settle: Callable[[], None] = lambda: None
        self.settles = 0
        self.polling: asyncio.Task[None] | None = None
        self._pending: asyncio.Future[None] | None = None

    def start(self, poller: RepositoryPoller) -> asyncio.Task[None]:
        self.polling = asyncio.create_task(poller.run())
        return self.polling

    async def sleep(self, seconds: float) -> None:
        ended = asyncio.get_running_loop().create_future()
        self.waits.put_nowait((seconds, ended))
        await ended

    async def _next_wait(self) -> tuple[float, asyncio.Future[None]]:
        """The poller's next wait; fails if polling ended instead."""
        assert self.polling is not None
        wait = asyncio.ensure_future(self.waits.get())
        await asyncio.wait({wait, self.polling}, return_when=asyncio.FIRST_COMPLETED)
        if not wait.done():
            wait.cancel()
            raise AssertionError(f"polling ended: {self.polling!r}")
        return wait.result()

    async def next_round_starts(self) -> None:
        """Wait for the poller to wait out its interval (the previous round, if any, is over);
        leave it waiting."""
        seconds, self._pending = await self._next_wait()
        assert seconds == INTERVAL

    async def round(self) -> None:
        """Run one round of `run()` and return once it is over."""
        if self._pending is None:
            await self.next_round_starts()
        assert self._pending is not None
        self._pending.set_result(None)
        while True:
            seconds, ended = await self._next_wait()
            if seconds == INTERVAL:  # the round is over; the poller waits for the next
                self._pending = ended
                return
            assert seconds == SETTLE
            self.settles += 1
            self.during_settle()
            ended.set_result(None)


def scenario(
    test: Callable[[FakeSource, FakeManager, Clock, RepositoryPoller], Coroutine[Any, Any, None]],
    **models: str,
) -> None:
    """Run `test` against a poller that runs until the test is over."""

    async def main() -> None:
        source, manager, clock = FakeSource(**models), FakeManager(), Clock()
        poller = RepositoryPoller(source, manager, INTERVAL, SETTLE, sleep=clock.sleep)
        polling = clock.start(poller)
        try:
            await test(source, manager, clock, poller)
            assert not polling.done(), polling
        finally:
            polling.cancel()
            with pytest.raises(asyncio.CancelledError):
                await polling

    asyncio.run(main())


def test_a_new_model_is_synced_once_after_the_settle_wait() -> None:
    async def test(
        source: FakeSource, manager: FakeManager, clock: Clock, poller: RepositoryPoller
    ) -> None:
        await clock.round()
        assert manager.calls == [("sync", "a")]
        assert clock.settles == 1
        await clock.round()  # nothing changed since: no settle wait, no sync
        assert manager.calls == [("sync", "a")]
        assert clock.settles == 1
        source.models["b"] = "b1"
        await clock.round()
        assert manager.calls == [("sync", "a"), ("sync", "b")]

    scenario(test, a="a1")


def test_a_changed_model_is_synced_when_its_fingerprint_held_over_the_settle_wait() -> None:
    async def test(
        source: FakeSource, manager: FakeManager, clock: Clock, poller: RepositoryPoller
    ) -> None:
        await clock.round()
        source.models["a"] = "a2"
        await clock.round()
        assert manager.calls == [("sync", "a"), ("sync", "a")]

    scenario(test, a="a1")


def test_a_model_still_changing_is_not_synced_and_is_looked_at_again() -> None:
    async def test(
        source: FakeSource, manager: FakeManager, clock: Clock, poller: RepositoryPoller
    ) -> None:
        await clock.round()
        manager.calls.clear()
        clock.settles = 0
        writes = iter(["a3", "a4"])

        def write() -> None:  # a copy in progress: the directory changes during each wait
            source.models["a"] = next(writes)

        clock.during_settle = write
        source.models["a"] = "a2"
        await clock.round()
        assert manager.calls == []  # changed again during the settle wait
        await clock.round()
        assert manager.calls == []  # and again
        clock.during_settle = lambda: None  # the copy is complete
        await clock.round()
        assert manager.calls == [("sync", "a")]
        await clock.round()
        assert manager.calls == [("sync", "a")]  # synced at its final fingerprint
        assert clock.settles == 3  # the last round had nothing to look at twice

    scenario(test, a="a1")


def test_a_model_that_left_is_removed_once() -> None:
    async def test(
        source: FakeSource, manager: FakeManager, clock: Clock, poller: RepositoryPoller
    ) -> None:
        await clock.round()
        del source.models["a"]
        await clock.round()
        assert manager.calls == [("sync", "a"), ("sync", "b"), ("remove", "a")]
        await clock.round()
        assert manager.calls[-1] == ("remove", "a") and len(manager.calls) == 3
        source.models["a"] = "a1"  # back again: a new model
        await clock.round()
        assert manager.calls[-1] == ("sync", "a")

    scenario(test, a="a1", b="b1")


def test_a_model_the_manager_does_not_find_is_skipped_and_retried() -> None:
    async def test(
        source: FakeSource, manager: FakeManager, clock: Clock, poller: RepositoryPoller
    ) -> None:
        manager.missing.add("a")
        await clock.round()
        assert manager.calls == [("sync", "a"), ("sync", "b")]  # b is still synced
        await clock.round()
        assert manager.calls[2:] == [("sync", "a")]  # a again, b not
        manager.missing.clear()
        await clock.round()
        assert manager.calls[3:] == [("sync", "a")]
        await clock.round()
        assert len(manager.calls) == 4  # a is synced now: not again

    scenario(test, a="a1", b="b1")


def test_a_failing_round_is_logged_and_polling_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async def test(
        source: FakeSource, manager: FakeManager, clock: Clock, poller: RepositoryPoller
    ) -> None:
        source.broken = True
        with caplog.at_level(logging.ERROR, logger="modelport.repository"):
            await clock.round()
        assert "polling the model repository failed" in caplog.text
        assert manager.calls == []
        source.broken = False
        await clock.round()
        assert manager.calls == [("sync", "a")]

    scenario(test, a="a1")


def test_a_snapshot_before_the_initial_load_keeps_unchanged_models_from_a_second_load() -> None:
    async def main() -> None:
        source, manager, clock = FakeSource(a="a1", b="b1"), FakeManager(), Clock()
        poller = RepositoryPoller(source, manager, INTERVAL, SETTLE, sleep=clock.sleep)
        await poller.snapshot()
        # ... the initial load runs here; meanwhile b changes and c appears
        source.models.update(b="b2", c="c1")
        polling = clock.start(poller)
        await clock.round()
        assert manager.calls == [("sync", "b"), ("sync", "c")]  # not a: it was loaded as is
        polling.cancel()

        # without the snapshot, the first round syncs every model it sees
        other_clock, other_manager = Clock(), FakeManager()
        unprimed = RepositoryPoller(
            source, other_manager, INTERVAL, SETTLE, sleep=other_clock.sleep
        )
        polling = other_clock.start(unprimed)
        await other_clock.round()
        assert other_manager.calls == [("sync", "a"), ("sync", "b"), ("sync", "c")]
        polling.cancel()

    asyncio.run(main())


def test_the_default_settle_time_is_a_quarter_interval_up_to_half_a_second() -> None:
    manager, source = FakeManager(), FakeSource()
    assert RepositoryPoller(source, manager, 1.0).settle == 0.25
    assert RepositoryPoller(source, manager, 5.0).settle == 0.5
    assert RepositoryPoller(source, manager, 5.0, 0.0).settle == 0.0
