"""Property tests: whatever JSON a client sends, the decoders answer with a request or with a
ModelportError (a 4xx naming the problem), never with another exception (a 500)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelport.core.errors import ErrorKind, ModelportError
from modelport.core.types import DataType, TensorSpec
from modelport.core.validate import InputGuard, Limits, ValidatedRequest
from modelport.frontends.rest.v2_codec import decode_request

SPECS = (TensorSpec("x", DataType.FP32, (-1, 2)), TensorSpec("t", DataType.BYTES, (-1,)))
GUARD = InputGuard(SPECS, (TensorSpec("y", DataType.FP32, (-1, 2)),), 8, Limits())

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
    st.sampled_from(["x", "t", "y", "FP32", "BYTES", "INT8", "data", "shape"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["name", "datatype", "shape", "data", "parameters", "inputs", "id"]),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=12,
)
tensor = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(["x", "t", "z"]), json_values),
        "datatype": st.one_of(st.sampled_from(["FP32", "BYTES", "FP64"]), json_values),
        "shape": st.one_of(st.lists(st.integers(-1, 3), max_size=3), json_values),
        "data": json_values,
        "parameters": st.one_of(
            st.fixed_dictionaries({"binary_data_size": st.integers(-1, 16)}), json_values
        ),
    },
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.one_of(st.lists(tensor, max_size=3), json_values),
        "outputs": st.one_of(
            st.lists(st.fixed_dictionaries({"name": st.sampled_from(["y", "q"])}), max_size=2),
            json_values,
        ),
        "parameters": json_values,
        "id": json_values,
    },
)


def _decodes_or_refuses(document: Any, tail: bytes = b"") -> None:
    header = json.dumps(document).encode()  # orjson refuses integers past 64 bits
    length = len(header) if tail else None
    try:
        request, _ = decode_request(header + tail, length, GUARD, "m", None)
    except ModelportError as exc:
        assert exc.kind in (ErrorKind.INVALID_INPUT, ErrorKind.TOO_LARGE), exc
        assert exc.message
        return
    assert isinstance(request, ValidatedRequest)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_json_document_decodes_or_gets_a_client_error(document: dict[str, Any]) -> None:
    _decodes_or_refuses(document)


@settings(max_examples=200, deadline=None)
@given(documents, st.binary(max_size=24))
def test_any_document_with_binary_data_decodes_or_gets_a_client_error(
    document: dict[str, Any], tail: bytes
) -> None:
    _decodes_or_refuses(document, tail)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_top_level_value_decodes_or_gets_a_client_error(document: Any) -> None:
    _decodes_or_refuses(document)
