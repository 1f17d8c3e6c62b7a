"""The data plane, the one API frontends call: validated requests only, refusals counted in one
place, a retired handle re-routed, typed answers, the model control mode enforced."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from modelport.core.data_plane import DataPlane, ModelControl
from modelport.core.errors import InferenceFailed, InvalidInput, ModelNotReady, NotAllowed
from modelport.core.types import InferRequest
from modelport.core.validate import InputGuard, ValidatedRequest
from tests.fakes import Core, batch, make_core


def run(
    scenario: Callable[[Core, DataPlane], Awaitable[Any]], control: ModelControl = "none"
) -> Any:
    async def main() -> Any:
        core = make_core()
        core.source.put("m", (1,))
        plane = DataPlane(core.manager, model_control=control, extensions=("binary",))
        await plane.start()
        try:
            return await scenario(core, plane)
        finally:
            await plane.close()

    return asyncio.run(main())


def decode_x(rows: int = 1) -> Callable[[InputGuard], ValidatedRequest]:
    def decode(guard: InputGuard) -> ValidatedRequest:
        builder = guard.builder("m", None)
        builder.declare("x", "FP32", [rows, 2])
        builder.add("x", batch(rows))
        return builder.finish(request_id="r1")

    return decode


def test_a_validated_request_comes_only_from_a_guard() -> None:
    with pytest.raises(TypeError, match="InputGuard"):
        ValidatedRequest(InferRequest("m", {}), None, object())  # type: ignore[arg-type]


def test_infer_runs_a_decoded_request_and_counts_it() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        handle = plane.resolve("m")
        response = await plane.infer(handle, decode_x(3))
        assert (response.model_name, response.model_version, response.id) == ("m", "1", "r1")
        np.testing.assert_array_equal(response.outputs["y"], batch(3) * 2)
        stats = plane.statistics("m")[0]
        assert stats["inference_count"] == 3 and stats["inference_stats"]["success"]["count"] == 1
        assert core.observer.requests == [("m", "1", "success")]
        assert core.observer.in_flight == 0

    run(scenario)


def test_a_request_the_frontend_cannot_decode_is_counted_as_refused() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        def bad(guard: InputGuard) -> ValidatedRequest:
            guard.builder("m", None).declare("x", "INT8", [1, 2])
            raise AssertionError("declare() should have refused INT8")

        with pytest.raises(InvalidInput, match="datatype 'INT8'"):
            await plane.infer(plane.resolve("m"), bad)

        async def too_big(guard: InputGuard) -> ValidatedRequest:
            await asyncio.sleep(0)  # as a frontend reading a body would
            raise InvalidInput("the body is bad")

        with pytest.raises(InvalidInput):
            await plane.infer(plane.resolve("m"), too_big)
        assert core.observer.requests == [("m", "1", "invalid_input")] * 2
        assert plane.statistics("m")[0]["inference_stats"]["fail"]["count"] == 2

    run(scenario)


def test_arrays_decoded_elsewhere_are_checked_in_full() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        wrong = np.zeros((1, 2), dtype=np.float64)
        with pytest.raises(InvalidInput, match="datatype 'FP64' does not match the model's FP32"):
            await plane.infer_request(InferRequest("m", {"x": wrong}))
        with pytest.raises(InvalidInput, match="unknown output 'z'"):
            await plane.infer_request(InferRequest("m", {"x": batch()}, outputs=("z",)))
        with pytest.raises(InvalidInput, match="no inputs"):
            await plane.infer_request(InferRequest("m", {}))
        assert [r[2] for r in core.observer.requests] == ["invalid_input"] * 3

    run(scenario)


def test_a_builder_refuses_data_that_does_not_match_its_header() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        def mismatched(guard: InputGuard) -> ValidatedRequest:
            builder = guard.builder("m", None)
            builder.declare("x", "FP32", [2, 2])
            builder.add("x", batch(1))
            return builder.finish()

        with pytest.raises(InvalidInput, match=r"decoded to float32 \[1, 2\], not the declared"):
            await plane.infer(plane.resolve("m"), mismatched)

        def twice(guard: InputGuard) -> ValidatedRequest:
            builder = guard.builder("m", None)
            builder.declare("x", "FP32", [1, 2])
            builder.declare("x", "FP32", [1, 2])
            return builder.finish()

        with pytest.raises(InvalidInput, match="appears more than once"):
            await plane.infer(plane.resolve("m"), twice)

        def undeclared(guard: InputGuard) -> ValidatedRequest:
            builder = guard.builder("m", None)
            builder.declare("x", "FP32", [1, 2])
            return builder.finish()

        with pytest.raises(InvalidInput, match="declared without data: x"):
            await plane.infer(plane.resolve("m"), undeclared)

    run(scenario)


def test_a_handle_retired_while_its_request_decoded_is_routed_again() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        handle = plane.resolve("m")
        core.source.put("m", (1, 2))

        async def decode_during_a_swap(guard: InputGuard) -> ValidatedRequest:
            await core.manager.sync("m")  # version 2 replaces version 1 meanwhile
            return decode_x()(guard)

        response = await plane.infer(handle, decode_during_a_swap)
        assert not handle.serving
        assert response.model_version == "2"
        assert core.observer.requests == [("m", "2", "success")]

    run(scenario)


def test_a_failing_model_answers_the_same_error_and_is_counted() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        core.runtimes.failing_runs.add("m-1")
        with pytest.raises(InferenceFailed) as caught:
            await plane.infer(plane.resolve("m"), decode_x())
        assert (
            caught.value.message == "model 'm' version 1 failed: ValueError: the fake model broke"
        )
        assert core.observer.requests == [("m", "1", "internal")]

    run(scenario)


def test_answers_come_back_typed() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        assert plane.ready() and plane.live()
        assert plane.metadata()["extensions"] == ["binary"]
        assert plane.model_metadata("m") == {
            "name": "m",
            "versions": ["1"],
            "platform": "fake_platform",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        }
        assert plane.is_ready("m") and not plane.is_ready("m", "7") and not plane.is_ready("n")
        [status] = plane.version_statuses("m")
        assert (status.version, status.state.value, status.reason) == ("1", "READY", "")
        assert await plane.repository_index(ready_only=True) == [
            {"name": "m", "version": "1", "state": "READY", "reason": ""}
        ]

    run(scenario)


def test_model_control_needs_the_explicit_mode() -> None:
    async def refused(core: Core, plane: DataPlane) -> None:
        with pytest.raises(NotAllowed, match="--model-control-mode explicit"):
            await plane.unload_model("m")

    async def allowed(core: Core, plane: DataPlane) -> None:
        await plane.unload_model("m")
        with pytest.raises(ModelNotReady):
            plane.resolve("m")
        await plane.load_model("m", '{"instance_count": 2}')
        assert plane.resolve("m").config.instance_count == 2

    run(refused)
    run(allowed, control="explicit")


def test_strict_readiness_counts_failed_models() -> None:
    async def main() -> tuple[bool, bool]:
        core = make_core()
        core.source.put("m")
        core.runtimes.broken.add("m-1")
        lenient, strict = DataPlane(core.manager), DataPlane(core.manager, strict_readiness=True)
        assert not lenient.ready()
        await lenient.start()
        await strict.start()
        answer = lenient.ready(), strict.ready()
        await core.manager.close()
        return answer

    assert asyncio.run(main()) == (True, False)


def test_a_request_rerouted_to_a_changed_version_is_checked_against_it() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        handle = plane.resolve("m")
        core.source.put("m", (1, 2), {"parameters": {"width": 3}})

        async def decode_during_a_swap(guard: InputGuard) -> ValidatedRequest:
            validated = decode_x()(guard)  # checked by version 1's guard: width 2
            await core.manager.sync("m")  # version 2, of width 3, replaces it meanwhile
            return validated

        with pytest.raises(InvalidInput, match=r"shape \[1, 2\] does not match the model's"):
            await plane.infer(handle, decode_during_a_swap)
        assert core.observer.requests == [("m", "2", "invalid_input")]

    run(scenario)


def test_a_request_checked_by_another_models_guard_is_checked_again() -> None:
    async def scenario(core: Core, plane: DataPlane) -> None:
        core.source.put("wide", (1,), {"parameters": {"width": 3}})
        await core.manager.sync("wide")
        wide = plane.resolve("wide")

        def foreign(guard: InputGuard) -> ValidatedRequest:
            builder = wide.guard.builder("wide", None)
            builder.declare("x", "FP32", [1, 3])
            builder.add("x", np.zeros((1, 3), dtype=np.float32))
            return builder.finish()

        with pytest.raises(InvalidInput, match=r"shape \[1, 3\] does not match"):
            await plane.infer(plane.resolve("m"), foreign)
        assert core.observer.requests == [("m", "1", "invalid_input")]
        assert plane.statistics("wide")[0]["inference_count"] == 0

    run(scenario)
