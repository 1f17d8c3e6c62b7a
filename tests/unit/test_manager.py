"""The model manager's lifecycle rules, over a fake source and fake runtimes: what serves while
versions load, fail, reload, drain and race. Every wait is on an event, never on the clock."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from modelport.core.data_plane import DataPlane
from modelport.core.errors import InvalidInput, LoadFailed, ModelNotFound, ModelNotReady
from modelport.core.types import InferRequest
from tests.fakes import Core, batch, make_core


def run(scenario: Callable[[Core], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        core = make_core()
        try:
            return await scenario(core)
        finally:
            await core.manager.close()

    return asyncio.run(main())


async def infer(core: Core, version: str | None = None) -> str:
    """Run one request for model m; returns the version that answered."""
    plane = DataPlane(core.manager)
    response = await plane.infer_request(InferRequest("m", {"x": batch()}, model_version=version))
    np.testing.assert_array_equal(response.outputs["y"], batch() * 2)
    return response.model_version


def test_versions_load_and_the_newest_serves() -> None:
    async def scenario(core: Core) -> None:
        core.source.put("m", (1, 2), {"version_policy": "all"})
        await core.manager.load_all()
        assert core.manager.resolve("m").version == "2"
        assert core.manager.resolve("m", "1").version == "1"
        assert core.runtimes.alive() == ["m-1", "m-2"]
        rows = await core.manager.index()
        assert [(r.get("version"), r["state"]) for r in rows] == [("1", "READY"), ("2", "READY")]

    run(scenario)


def test_a_failed_reload_keeps_the_old_load_serving_with_its_labels_and_traffic() -> None:
    config = {
        "version_policy": "all",
        "labels": {"stable": 1, "canary": 2},
        "traffic": {1: 50, 2: 50},
    }

    async def scenario(core: Core) -> None:
        core.source.put("m", (1, 2), config)
        await core.manager.load_all()
        canary = core.manager.resolve("m", "canary")
        core.runtimes.broken.add("m-2")
        core.source.touch("m", 2)  # version 2's files changed, and the new files do not load

        failures = await core.manager.sync("m")

        assert failures == ["version 2: m-2 is broken"]
        assert core.manager.resolve("m", "canary") is canary  # the old load, still serving
        assert core.manager.resolve("m", "2") is canary
        assert core.manager.resolve("m", "stable").version == "1"
        routed = {core.manager.resolve("m").version for _ in range(64)}
        assert routed == {"1", "2"}  # the traffic split still reaches both
        assert await infer(core, "canary") == "2"
        rows = {r.get("version"): r for r in await core.manager.index()}
        assert rows["2"]["state"] == "READY"
        assert rows["2"]["labels"] == ["canary"] and rows["2"]["traffic"] == 50
        assert "reloading failed, the previous load keeps serving" in rows["2"]["reason"]
        assert core.runtimes.alive() == ["m-1", "m-2"]
        # the gauge never showed version 2 as anything but READY
        assert ("m", "2", "FAILED") not in core.observer.states

    run(scenario)


def test_a_failed_first_load_reports_why_and_a_fixed_one_serves() -> None:
    async def scenario(core: Core) -> None:
        core.source.put("m")
        core.runtimes.broken.add("m-1")
        await core.manager.load_all()
        with pytest.raises(ModelNotReady, match="version 1: m-1 is broken"):
            core.manager.resolve("m")
        assert core.manager.failed() == ["m/1"]

        core.runtimes.broken.clear()
        core.source.touch("m", 1)
        await core.manager.load("m")
        assert await infer(core) == "1"
        assert core.manager.failed() == []

    run(scenario)


def test_a_replaced_version_drains_before_it_closes() -> None:
    async def scenario(core: Core) -> None:
        core.source.put("m", (1,))
        await core.manager.load_all()
        core.runtimes.hold_runs = asyncio.Event()
        running = asyncio.create_task(infer(core))
        await core.runtimes.run_started.wait()
        queued = asyncio.create_task(infer(core))  # one instance: it waits behind the first
        await asyncio.sleep(0)
        old = core.manager.resolve("m")

        core.source.put("m", (1, 2))  # the policy (latest: 1) now selects version 2
        await core.manager.sync("m")

        assert core.manager.resolve("m").version == "2"
        assert not old.serving
        with pytest.raises(ModelNotFound):
            core.manager.resolve("m", "1")
        assert core.runtimes.alive() == ["m-1", "m-2"]  # version 1 waits for its request
        states = [s for s in core.observer.states if s[0] == "m"]
        assert states.index(("m", "2", "READY")) < states.index(("m", "1", "UNAVAILABLE"))

        core.runtimes.hold_runs.set()
        # both finished on the version they started on, the queued one too
        assert await asyncio.gather(running, queued) == ["1", "1"]
        await asyncio.gather(*core.manager._retiring)
        assert core.runtimes.alive() == ["m-2"]
        assert core.runtimes.events[-1] == "closed m-1"

    run(scenario)


def test_a_failed_replacement_does_not_retire_what_serves() -> None:
    async def scenario(core: Core) -> None:
        core.source.put("m", (1,))
        await core.manager.load_all()
        core.runtimes.broken.add("m-2")
        core.source.put("m", (1, 2))
        assert await core.manager.sync("m") == ["version 2: m-2 is broken"]
        assert core.manager.resolve("m").version == "1"
        assert core.runtimes.alive() == ["m-1"]

    run(scenario)


def test_a_serving_config_change_reloads_every_version_and_routing_alone_does_not() -> None:
    async def scenario(core: Core) -> None:
        core.source.put("m", (1, 2), {"version_policy": "all"})
        await core.manager.load_all()
        before = {v: core.manager.resolve("m", v) for v in ("1", "2")}

        core.source.put("m", (1, 2), {"version_policy": "all", "labels": {"stable": 1}})
        await core.manager.sync("m")
        assert all(core.manager.resolve("m", v) is before[v] for v in ("1", "2"))
        assert core.manager.resolve("m").version == "1"  # the label routes, nothing reloaded

        core.source.put("m", (1, 2), {"version_policy": "all", "instance_count": 2})
        await core.manager.sync("m")
        after = {v: core.manager.resolve("m", v) for v in ("1", "2")}
        assert all(after[v] is not before[v] for v in ("1", "2"))
        assert all(after[v].config.instance_count == 2 for v in ("1", "2"))
        await asyncio.gather(*core.manager._retiring)
        assert sorted(core.runtimes.alive()) == ["m-1", "m-2"]
        assert len(core.runtimes.hosts) == 4

    run(scenario)


def test_two_syncs_of_one_model_take_turns() -> None:
    async def scenario(core: Core) -> None:
        core.source.put("m", (1,))
        core.runtimes.block_loads = threading.Event()
        first = asyncio.create_task(core.manager.sync("m"))
        await asyncio.to_thread(core.runtimes.loads_waiting.acquire)  # the first load started
        core.source.touch("m", 1)
        second = asyncio.create_task(core.manager.sync("m"))
        # the second load must not start while the first is loading (it waits for the model's
        # lock); without the lock it starts at once, and this sees it
        alongside = await asyncio.to_thread(core.runtimes.loads_waiting.acquire, True, 0.5)
        assert not alongside
        core.runtimes.block_loads.set()
        assert await asyncio.gather(first, second) == [[], []]

        assert core.runtimes.most_loading_at_once == 1
        assert core.runtimes.events[:2] == ["loaded m-1", "loaded m-1"]
        await asyncio.gather(*core.manager._retiring)
        assert core.runtimes.alive() == ["m-1"]  # the second load replaced the first
        assert core.manager.resolve("m") is not None

    run(scenario)


def test_unload_waits_for_requests_and_a_load_brings_it_back() -> None:
    async def scenario(core: Core) -> None:
        core.source.put("m")
        await core.manager.load_all()
        core.runtimes.hold_runs = asyncio.Event()
        in_flight = asyncio.create_task(infer(core))
        await core.runtimes.run_started.wait()
        unloading = asyncio.create_task(core.manager.unload("m"))
        await asyncio.sleep(0)
        with pytest.raises(ModelNotReady, match="unloaded"):
            core.manager.resolve("m")
        assert not unloading.done()
        core.runtimes.hold_runs.set()
        await asyncio.gather(in_flight, unloading)
        assert core.runtimes.alive() == []

        core.runtimes.hold_runs = None
        await core.manager.load("m")
        assert await infer(core) == "1"

    run(scenario)


def test_a_load_request_with_a_config_uses_it_and_a_bad_one_is_refused() -> None:
    async def scenario(core: Core) -> None:
        core.source.put("m", (1, 2))
        await core.manager.load("m", '{"version_policy": {"specific": [1]}}')
        assert core.manager.resolve("m").version == "1"
        with pytest.raises(InvalidInput, match="not JSON"):
            await core.manager.load("m", "{")
        with pytest.raises(InvalidInput, match="version_polcy"):
            await core.manager.load("m", '{"version_polcy": "all"}')
        core.runtimes.broken.add("m-2")
        with pytest.raises(LoadFailed, match="m-2 is broken"):
            await core.manager.load("m", '{"version_policy": "all"}')

    run(scenario)


def test_a_model_that_left_the_source_is_forgotten() -> None:
    async def scenario(core: Core) -> None:
        core.source.put("m")
        await core.manager.load_all()
        del core.source.models["m"]
        await core.manager.remove("m")
        with pytest.raises(ModelNotFound):
            core.manager.resolve("m")
        assert await core.manager.index() == []

    run(scenario)


def test_a_failed_config_reload_is_tried_again_by_the_next_load() -> None:
    async def scenario(core: Core) -> None:
        core.source.put("m")
        await core.manager.load_all()
        core.runtimes.broken.add("m-1")
        with pytest.raises(LoadFailed):
            await core.manager.load("m", '{"instance_count": 2}')
        assert core.manager.resolve("m").config.instance_count == 1  # the old load serves on
        core.runtimes.broken.clear()
        await core.manager.load("m", '{"instance_count": 2}')
        assert core.manager.resolve("m").config.instance_count == 2
        [row] = await core.manager.index()
        assert row["reason"] == ""

    run(scenario)


def test_a_version_still_loading_when_the_manager_closes_is_closed_not_served() -> None:
    async def scenario(core: Core) -> None:
        core.source.put("m")
        core.runtimes.block_loads = threading.Event()
        loading = asyncio.create_task(core.manager.sync("m"))
        await asyncio.to_thread(core.runtimes.loads_waiting.acquire)
        await core.manager.close()
        core.runtimes.block_loads.set()
        await loading
        assert core.runtimes.alive() == []  # loaded after close: closed at once
        assert ("m", "1", "READY") not in core.observer.states
        with pytest.raises(ModelNotReady):
            core.manager.resolve("m")

    run(scenario)


def test_close_closes_every_version() -> None:
    async def scenario(core: Core) -> None:
        core.source.put("m", (1, 2), {"version_policy": "all"})
        core.source.put("n")
        await core.manager.load_all()
        assert len(core.runtimes.alive()) == 3
        await core.manager.close()
        assert core.runtimes.alive() == []

    run(scenario)


def test_a_sync_waiting_while_the_model_is_removed_starts_on_a_fresh_record() -> None:
    async def scenario(core: Core) -> None:
        core.source.put("m")
        await core.manager.load_all()
        core.runtimes.hold_runs = asyncio.Event()
        in_flight = asyncio.create_task(infer(core))
        await core.runtimes.run_started.wait()
        removing = asyncio.create_task(core.manager.remove("m"))  # waits for the request
        await asyncio.sleep(0)
        core.source.touch("m", 1)
        syncing = asyncio.create_task(core.manager.sync("m"))  # queued behind the removal
        await asyncio.sleep(0)
        core.runtimes.hold_runs.set()
        await asyncio.gather(in_flight, removing, syncing)
        assert await infer(core) == "1"  # the sync's load is the one that serves
        await asyncio.gather(*core.manager._retiring)
        assert core.runtimes.alive() == ["m-1"]

    run(scenario)


def test_a_same_number_reload_never_shows_the_serving_version_as_down() -> None:
    async def scenario(core: Core) -> None:
        core.source.put("m")
        await core.manager.load_all()
        core.observer.states.clear()
        core.source.touch("m", 1)
        await core.manager.sync("m")
        await asyncio.gather(*core.manager._retiring)
        assert core.observer.states == [("m", "1", "READY")]

    run(scenario)
