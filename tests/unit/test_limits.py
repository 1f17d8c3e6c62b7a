"""A model's limits (config.yaml `rate_limit`, `max_in_flight`) in the core: the token bucket,
the config fields, admission in the data plane (refused before decoding, released on every
path, shared by a model's versions, changed by a reload), and the Retry-After they lead to."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelport.core.config import config_from_mapping
from modelport.core.data_plane import DataPlane
from modelport.core.errors import InferenceFailed, InvalidInput, ModelNotReady, RateLimited
from modelport.core.limits import RateLimit, TokenBucket
from modelport.core.manager import ModelManager
from modelport.core.types import InferRequest
from modelport.core.validate import InputGuard, Limits, ValidatedRequest
from modelport.frontends.rest.errors import error_headers
from modelport.repository import LocalRepository
from tests.fakes import Core, FakeObserver, FakeRuntimes, batch, make_core

SLOW_REFILL = {"requests_per_second": 0.001, "burst": 2}
"""Two requests, then one more only after 1,000 s: no test waits for a refill."""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---- the token bucket ---------------------------------------------------------------------


def test_a_bucket_lets_a_burst_through_then_refills_at_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(RateLimit(requests_per_second=4, burst=3), clock)
    assert [bucket.try_take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take() == pytest.approx(0.25)  # one token every 1/4 s
    clock.now += 0.125
    assert bucket.try_take() == pytest.approx(0.125)  # half a token there: half the wait left
    clock.now += 0.125
    assert bucket.try_take() == 0.0
    assert bucket.try_take() == pytest.approx(0.25)


def test_a_bucket_holds_no_more_than_its_burst_however_long_it_was_idle() -> None:
    clock = Clock()
    bucket = TokenBucket(RateLimit(requests_per_second=10, burst=2), clock)
    clock.now += 3600
    assert [bucket.try_take() for _ in range(3)][:2] == [0.0, 0.0]
    assert bucket.try_take() > 0


def test_take_raises_rate_limited_with_the_time_until_a_token() -> None:
    clock = Clock()
    bucket = TokenBucket(RateLimit(requests_per_second=2, burst=1), clock)
    bucket.take("model 'm'")
    with pytest.raises(RateLimited, match=r"model 'm' is over its rate limit of 2 requests") as err:
        bucket.take("model 'm'")
    assert err.value.retry_after == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("rate", "burst", "words"), [(0, 1, "requests_per_second"), (1, 0, "burst")]
)
def test_a_rate_limit_refuses_values_that_would_refuse_everything(
    rate: float, burst: int, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        RateLimit(rate, burst)


# ---- config.yaml ------------------------------------------------------------------------


def test_the_config_reads_both_limits_and_defaults_the_burst_to_one_second() -> None:
    config = config_from_mapping(
        {"rate_limit": {"requests_per_second": 50, "burst": 100}, "max_in_flight": 16}, "m"
    )
    assert config.rate_limit is not None and config.max_in_flight == 16
    assert config.rate_limit.limit() == RateLimit(50, 100)
    unburst = config_from_mapping({"rate_limit": {"requests_per_second": 2.5}}, "m")
    assert unburst.rate_limit is not None and unburst.rate_limit.limit() == RateLimit(2.5, 3)
    slow = config_from_mapping({"rate_limit": {"requests_per_second": 0.1}}, "m")
    assert slow.rate_limit is not None and slow.rate_limit.limit().burst == 1
    assert config_from_mapping({}, "m").rate_limit is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"max_in_flight": True}, "max_in_flight"),
        ({"max_in_flight": "8"}, "max_in_flight"),
        ({"rate_limit": {"requests_per_second": 0}}, "rate_limit.requests_per_second"),
        ({"rate_limit": {"requests_per_second": -5}}, "rate_limit.requests_per_second"),
        ({"rate_limit": {"requests_per_second": float("inf")}}, "rate_limit.requests_per_second"),
        ({"rate_limit": {"requests_per_second": 1, "burst": 0}}, "rate_limit.burst"),
        ({"rate_limit": {"requests_per_second": 1, "burst": 1.5}}, "rate_limit.burst"),
        ({"rate_limit": {"burst": 10}}, "rate_limit.requests_per_second"),
        ({"rate_limit": {"requests_per_second": 1, "brust": 10}}, "rate_limit.brust"),
        ({"rate_limit": 50}, "rate_limit"),
    ],
)
def test_a_bad_limit_fails_the_config_naming_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"invalid config.yaml: {field}: "):
        config_from_mapping(raw, "m", "config.yaml")


def test_a_bad_limit_in_config_yaml_fails_the_models_load_with_the_reason(
    tmp_path: Path,
) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.yaml").write_text("max_in_flight: 0\n")

    async def main() -> None:
        manager = ModelManager(LocalRepository(tmp_path), FakeRuntimes(), FakeObserver(), Limits())
        reason = "invalid config.yaml: max_in_flight: Input should be greater than or equal to 1"
        assert await manager.sync("m") == [reason]
        [row] = await manager.index()
        assert row["reason"] == reason
        with pytest.raises(ModelNotReady, match="max_in_flight"):
            manager.resolve("m")

    asyncio.run(main())


# ---- admission in the data plane ---------------------------------------------------------


def run(scenario: Callable[[Core, DataPlane], Awaitable[Any]], **limits: Any) -> Any:
    """`limits` is model m's config; model `other` has none."""

    async def main() -> Any:
        core = make_core()
        core.source.put("m", (1,), limits)
        core.source.put("other")
        plane = DataPlane(core.manager)
        await plane.start()
        try:
            return await scenario(core, plane)
        finally:
            if core.runtimes.hold_runs is not None:
                core.runtimes.hold_runs.set()
            await plane.close()

    return asyncio.run(main())


def decode_x(model: str = "m", rows: int = 1) -> Callable[[InputGuard], ValidatedRequest]:
    def decode(guard: InputGuard) -> ValidatedRequest:
        builder = guard.builder(model, None)
        builder.declare("x", "FP32", [rows, 2])
        builder.add("x", batch(rows))
        return builder.finish(request_id="r1")

    return decode


async def infer(plane: DataPlane, model: str = "m", version: str | None = None) -> Any:
    return await plane.infer(plane.resolve(model, version), decode_x(model))


def test_a_rate_limited_model_refuses_past_its_burst_before_decoding() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        await infer(plane)
        await infer(plane)
        decoded: list[str] = []

        def spy(guard: InputGuard) -> ValidatedRequest:
            decoded.append("decoded")
            return decode_x()(guard)

        with pytest.raises(RateLimited, match="model 'm' is over its rate limit") as err:
            await plane.infer(plane.resolve("m"), spy)
        assert decoded == []  # refused before the frontend read or decoded anything
        assert 999 < err.value.retry_after <= 1000
        assert core.observer.limited == [("m", "rate_limit")]
        assert core.observer.requests[-1] == ("m", "1", "rate_limited")  # a refusal, counted
        await infer(plane, "other")  # another model on the same server is not limited

    run(scenario, rate_limit=SLOW_REFILL)


def test_max_in_flight_refuses_past_the_cap_and_frees_a_slot_when_one_ends() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        core.runtimes.hold_runs = asyncio.Event()
        running = [asyncio.create_task(infer(plane)) for _ in range(2)]
        await core.runtimes.run_started.wait()
        with pytest.raises(RateLimited, match="has 2 requests in flight, its max_in_flight") as err:
            await asyncio.wait_for(infer(plane), 5)  # (admitted, it would wait for the hold)
        assert err.value.retry_after == 1.0
        assert core.observer.limited == [("m", "max_in_flight")]
        other = asyncio.create_task(infer(plane, "other"))  # admitted: other models have no cap
        await asyncio.sleep(0)
        core.runtimes.hold_runs.set()
        await asyncio.gather(*running, other)
        await asyncio.gather(infer(plane), infer(plane))  # both slots free again

    run(scenario, max_in_flight=2)


def test_a_refusal_by_the_cap_spends_no_token() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        core.runtimes.hold_runs = asyncio.Event()
        held = asyncio.create_task(infer(plane))
        await core.runtimes.run_started.wait()
        for _ in range(3):
            with pytest.raises(RateLimited, match="max_in_flight"):
                await infer(plane)
        core.runtimes.hold_runs.set()
        await held
        await infer(plane)  # the burst's second token is still there

    run(scenario, max_in_flight=1, rate_limit=SLOW_REFILL)


async def _slot_is_free(plane: DataPlane) -> None:
    """With max_in_flight 1: a request is admitted (and runs, nothing holds it)."""
    response = await infer(plane)
    np.testing.assert_array_equal(response.outputs["y"], batch(1) * 2)


def test_a_slot_is_released_when_the_model_fails() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        core.runtimes.failing_runs.add("m-1")
        with pytest.raises(InferenceFailed):
            await infer(plane)
        core.runtimes.failing_runs.clear()
        await _slot_is_free(plane)

    run(scenario, max_in_flight=1)


def test_a_slot_is_released_when_decoding_fails_or_the_client_goes_away() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        async def bad_body(guard: InputGuard) -> ValidatedRequest:
            await asyncio.sleep(0)  # as a frontend reading a body would
            raise InvalidInput("the body is bad")

        with pytest.raises(InvalidInput):
            await plane.infer(plane.resolve("m"), bad_body)
        await _slot_is_free(plane)

        class ClientGone(Exception):  # what the REST fast path's read_body raises
            pass

        async def disconnected(guard: InputGuard) -> ValidatedRequest:
            raise ClientGone

        with pytest.raises(ClientGone):
            await plane.infer(plane.resolve("m"), disconnected)
        await _slot_is_free(plane)

    run(scenario, max_in_flight=1)


def test_a_slot_is_released_when_the_request_is_cancelled() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        core.runtimes.hold_runs = asyncio.Event()
        held = asyncio.create_task(infer(plane))  # a gRPC deadline or reset cancels like this
        await core.runtimes.run_started.wait()
        with pytest.raises(RateLimited):
            await infer(plane)
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
        core.runtimes.hold_runs.set()
        await _slot_is_free(plane)

        body_wait = asyncio.Event()

        async def slow_body(guard: InputGuard) -> ValidatedRequest:
            await body_wait.wait()  # cancelled while the body is still arriving
            return decode_x()(guard)

        reading = asyncio.create_task(plane.infer(plane.resolve("m"), slow_body))
        await asyncio.sleep(0)
        with pytest.raises(RateLimited):  # a body being read holds its slot
            await infer(plane)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        await _slot_is_free(plane)

    run(scenario, max_in_flight=1)


def test_a_models_versions_share_its_limits() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        core.source.put("m", (1, 2), {"version_policy": "all", "rate_limit": SLOW_REFILL})
        await core.manager.sync("m")
        await infer(plane, version="1")
        await infer(plane, version="2")
        with pytest.raises(RateLimited):
            await infer(plane, version="1")
        with pytest.raises(RateLimited):
            await infer(plane, version="2")

    run(scenario)


def test_a_reload_with_other_limits_applies_them_without_reloading_the_model() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        await infer(plane)
        await infer(plane)
        with pytest.raises(RateLimited):
            await infer(plane)
        loads = len(core.runtimes.hosts)

        core.source.put("m", (1,), {"rate_limit": {"requests_per_second": 1000, "burst": 5}})
        await core.manager.sync("m")
        for _ in range(5):  # a new limit starts with its full burst
            await infer(plane)

        core.source.put("m", (1,), {"max_in_flight": 1})  # and the rate limit is gone
        await core.manager.sync("m")
        core.runtimes.hold_runs = asyncio.Event()
        held = asyncio.create_task(infer(plane))
        await core.runtimes.run_started.wait()
        with pytest.raises(RateLimited, match="max_in_flight"):
            await asyncio.wait_for(infer(plane), 5)

        core.source.put("m", (1,), {})  # no limits at all: nothing is refused any more
        await core.manager.sync("m")
        more = [asyncio.create_task(infer(plane)) for _ in range(3)]
        await asyncio.sleep(0)
        core.runtimes.hold_runs.set()
        await asyncio.gather(held, *more)
        assert len(core.runtimes.hosts) == loads  # limits alone never reload the model

    run(scenario, rate_limit=SLOW_REFILL)


def test_syncing_the_same_limits_again_grants_no_fresh_burst() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        await infer(plane)
        await infer(plane)
        core.source.touch("m", 1)  # new files: the version reloads, its limits stay
        await core.manager.sync("m")
        with pytest.raises(RateLimited):
            await infer(plane)

    run(scenario, rate_limit=SLOW_REFILL)


def test_a_pipeline_step_is_admitted_under_its_models_limits() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        tensor = {"name": "x", "datatype": "FP32", "shape": [-1, 2]}
        core.source.put(
            "p",
            (1,),
            {
                "inputs": [tensor],
                "outputs": [{**tensor, "name": "y"}],
                "pipeline": [{"model": "m", "inputs": {"x": "x"}, "outputs": {"y": "y"}}],
            },
        )
        await core.manager.sync("p")
        await infer(plane)
        request = InferRequest("p", {"x": batch(1)})
        await plane.infer_request(request)
        with pytest.raises(RateLimited, match=r"pipeline 'p' step 1 \('m'\): model 'm'") as err:
            await plane.infer_request(request)
        assert err.value.retry_after > 999  # kept through the pipeline's restating

    run(scenario, rate_limit=SLOW_REFILL)


# ---- Retry-After ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(0.001, b"1"), (0.9, b"1"), (1.0, b"1"), (1.2, b"2"), (999.5, b"1000")],
)
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(
    retry_after: float, header: bytes
) -> None:
    assert error_headers(RateLimited("slow down", retry_after)) == [(b"retry-after", header)]


def test_other_errors_carry_no_retry_after() -> None:
    assert error_headers(InvalidInput("bad")) == []
    assert error_headers(ValueError("boom")) == []
