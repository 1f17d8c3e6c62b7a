"""Tensor data nested deeper than a tensor can be is refused by name (400), in the v2 codec that
REST and the queues share and in TF Serving's predict, and never reaches a recursion limit."""

from __future__ import annotations

import pytest

from modelport.core.errors import InvalidInput
from modelport.core.types import DataType, TensorSpec
from modelport.core.validate import InputGuard, Limits
from modelport.frontends.rest import tfserving, v2_codec
from modelport.frontends.rest.request_json import MAX_DATA_NESTING
from modelport.frontends.rest.v2_codec import decode_request


def nested(depth: int, leaf: str = '"a"') -> str:
    return "[" * depth + leaf + "]" * depth


def guard(datatype: DataType = DataType.BYTES) -> InputGuard:
    spec = TensorSpec("text", datatype, (-1,))
    return InputGuard([spec], [TensorSpec("lower", datatype, (-1,))], 1024, Limits())


def v2_body(data: str, datatype: str = "BYTES", shape: str = "[1]") -> bytes:
    return (
        f'{{"inputs": [{{"name": "text", "datatype": "{datatype}", "shape": {shape}, '
        f'"data": {data}}}]}}'
    ).encode()


@pytest.mark.parametrize("depth", [MAX_DATA_NESTING + 1, 500, 1000])
def test_v2_bytes_data_nested_too_deep_is_refused(depth: int) -> None:
    with pytest.raises(InvalidInput, match="'data' is nested deeper than 64 levels"):
        decode_request(v2_body(nested(depth)), None, guard(), "m", None)


def test_v2_data_as_deep_as_a_tensor_may_be_is_read() -> None:
    request, _ = decode_request(v2_body(nested(MAX_DATA_NESTING)), None, guard(), "m", None)
    assert request.request.inputs["text"].tolist() == [b"a"]


def test_v2_numeric_data_nested_too_deep_is_a_client_error() -> None:
    body = v2_body(nested(1000, "1.0, 2.0"), "FP32", "[2]")
    with pytest.raises(InvalidInput, match="'data' is not a regular"):
        decode_request(body, None, guard(DataType.FP32), "m", None)


def test_a_recursion_error_while_decoding_is_a_client_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def too_deep(*args: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(v2_codec, "_decode_inputs", too_deep)
    with pytest.raises(InvalidInput, match="nested too deeply"):
        decode_request(v2_body('["a"]'), None, guard(), "m", None)


class _Handle:
    """What TF Serving's decoder reads of a model handle."""

    name = "text_lower"

    class signature:
        inputs = (TensorSpec("text", DataType.BYTES, (-1,)),)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (f'{{"instances": {nested(1000)}}}', "'instances' for input 'text': nested deeper than 64"),
        (f'{{"inputs": {nested(700)}}}', "'inputs' for input 'text': nested deeper than 64"),
        (f'{{"inputs": {{"text": {nested(485)}}}}}', "input 'text': nested deeper than 64"),
    ],
)
def test_tf_serving_instances_nested_too_deep_are_refused(body: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        tfserving._decode_predict(body.encode(), _Handle(), guard(), None)  # type: ignore[arg-type]


def test_the_queue_path_answers_deep_data_with_a_400(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.unit.test_queue_processor import FakeDelivery, Rig, error_of, request, run

    deep = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": %s}]}'

    async def scenario(rig: Rig) -> list[tuple[int, str]]:
        answers = []
        for body in (deep % nested(1000, "1, 2").encode(), deep % b"[[1, 2]]"):
            await rig.processor.process(FakeDelivery(request(body)))
            reply = rig.transport.replies[-1][1]
            answers.append((reply.status, error_of(reply) if reply.status != 200 else ""))
        return answers

    def too_deep(*args: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    deep_answer, _ = run(scenario)
    assert deep_answer[0] == 400 and "'data' is not a regular" in deep_answer[1]
    monkeypatch.setattr(v2_codec, "_decode_inputs", too_deep)
    assert run(scenario) == [(400, "the request body is nested too deeply")] * 2
    assert "unexpected error" not in caplog.text and "Traceback" not in caplog.text
