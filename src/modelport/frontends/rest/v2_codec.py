"""v2 REST bodies <-> core requests: JSON tensors and Triton's binary tensor extension.

A request body is a JSON header, optionally followed by raw tensor bytes; the
`Inference-Header-Content-Length` header says where the JSON ends. Every declared shape is checked
against the model (and the element limit) before its data is decoded, and binary tensors become
numpy views of the body without a copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from modelport.core.errors import InferenceFailed, InvalidInput
from modelport.core.types import DataType, InferResponse
from modelport.core.validate import (
    InputGuard,
    RequestBuilder,
    ValidatedRequest,
    element_count,
    integers_fit,
)
from modelport.frontends.raw_tensors import from_raw, to_raw
from modelport.frontends.rest.request_json import MAX_DATA_NESTING, parse_request

HEADER_LENGTH = "inference-header-content-length"


@dataclass(slots=True)
class OutputFormat:
    """How the client wants each output back: binary or JSON."""

    binary_default: bool = False
    binary: dict[str, bool] = field(default_factory=dict)

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_default)


def parse_header_length(value: str | None, body_length: int) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise InvalidInput(f"Inference-Header-Content-Length {value!r} is not an integer") from None
    if length < 0 or length > body_length:
        raise InvalidInput(
            f"Inference-Header-Content-Length {length} is outside the body of {body_length} bytes"
        )
    return length


def decode_request(
    body: bytes, header_length: int | None, guard: InputGuard, model: str, version: str | None
) -> tuple[ValidatedRequest, OutputFormat]:
    """A v2 infer body (REST and queues) -> the validated request and how to answer it."""
    try:
        return _decode_request(body, header_length, guard, model, version)
    except RecursionError:  # a backstop: nesting is bounded where the values are walked
        raise InvalidInput("the request body is nested too deeply") from None


def _decode_request(
    body: bytes, header_length: int | None, guard: InputGuard, model: str, version: str | None
) -> tuple[ValidatedRequest, OutputFormat]:
    header: bytes | memoryview
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        view = memoryview(body)
        header, binary = view[:header_length], view[header_length:]
    document = parse_request(header)
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    parameters = _mapping(document.get("parameters"), "parameters")
    builder = guard.builder(model, version)
    _decode_inputs(document.get("inputs"), binary, builder)
    output_format = OutputFormat(
        binary_default=_flag(parameters, "binary_data_output", "parameters")
    )
    wanted = _decode_outputs(document.get("outputs"), output_format)
    if wanted is not None:
        builder.want_outputs(wanted)
    return builder.finish(request_id=request_id, parameters=parameters), output_format


def _mapping(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"'{where}' must be a JSON object")
    return value


def _decode_inputs(items: object, binary: memoryview, builder: RequestBuilder) -> None:
    if not isinstance(items, list) or not items:
        raise InvalidInput("'inputs' must be a non-empty list")
    offset = 0
    for item in items:
        if not isinstance(item, dict):
            raise InvalidInput("each entry of 'inputs' must be a JSON object")
        name = item.get("name")
        spec, shape = builder.declare(name, item.get("datatype"), item.get("shape"))
        assert isinstance(name, str)  # declare() refuses anything else
        parameters = _mapping(item.get("parameters"), f"inputs.{name}.parameters")
        size = parameters.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidInput(
                    f"input '{name}': binary_data_size must be a non-negative integer"
                )
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} bytes left)"
                )
            chunk = binary[offset : offset + size]
            offset += size
            builder.add(name, from_raw(name, spec.datatype, shape, chunk))
        else:
            if "data" not in item:
                raise InvalidInput(f"input '{name}' has neither 'data' nor binary_data_size")
            builder.add(name, _from_json(name, spec.datatype, shape, item["data"]))
    if offset != len(binary):
        raise InvalidInput(
            f"the body carries {len(binary)} bytes of binary tensor data but the inputs "
            f"declare {offset}"
        )


def _from_json(name: str, datatype: DataType, shape: tuple[int, ...], data: object) -> np.ndarray:
    count = element_count(shape)
    if datatype is DataType.BYTES:
        return _json_strings(name, data, count).reshape(shape)
    target = datatype.numpy_dtype
    try:
        parsed = np.asarray(data)  # floating-point data may come parsed already (request_json)
    except (ValueError, TypeError):
        raise InvalidInput(f"input '{name}': 'data' is not a regular (non-ragged) array") from None
    if parsed.size != count:
        raise InvalidInput(
            f"input '{name}': 'data' holds {parsed.size} elements but shape {list(shape)} "
            f"needs {count}"
        )
    if target.kind in "iu":
        converted = _json_integers(name, datatype, data, parsed)
    elif count and parsed.dtype.kind not in ("b" if target.kind == "b" else "iuf"):
        wanted = "true/false" if target.kind == "b" else "numbers"
        raise InvalidInput(f"input '{name}': {datatype.value} data must hold {wanted}")
    else:
        converted = parsed.astype(target, copy=False)
    return converted.reshape(shape)


def _json_integers(name: str, datatype: DataType, data: object, parsed: np.ndarray) -> np.ndarray:
    """Integers exactly: out-of-range values and fractions are refused, never wrapped or cut."""
    problem = f"input '{name}': {datatype.value} data must hold integers in range"
    if parsed.dtype.kind in "iu":
        candidates = parsed
    elif parsed.size == 0:
        return parsed.astype(datatype.numpy_dtype)
    elif parsed.dtype.kind in "fO":
        # numpy infers float64 (or objects) when Python ints exceed int64, e.g. large UINT64.
        candidates = None
    else:
        raise InvalidInput(problem)
    try:
        with np.errstate(all="raise"):
            converted = np.asarray(
                data if candidates is None else candidates, dtype=datatype.numpy_dtype
            )
    except (OverflowError, ValueError, TypeError, FloatingPointError):
        raise InvalidInput(problem) from None
    if candidates is not None:
        if not integers_fit(candidates, datatype):
            raise InvalidInput(problem)
    elif parsed.dtype.kind == "f" and not np.array_equal(parsed, converted):
        raise InvalidInput(problem)
    return converted


def _json_strings(name: str, data: object, count: int) -> np.ndarray:
    flat: list[bytes] = []
    stack = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list):
            if depth == MAX_DATA_NESTING:
                raise InvalidInput(
                    f"input '{name}': 'data' is nested deeper than {MAX_DATA_NESTING} levels"
                )
            stack.extend((child, depth + 1) for child in reversed(item))
        elif isinstance(item, str):
            flat.append(item.encode("utf-8"))
        else:
            raise InvalidInput(f"input '{name}': BYTES data must hold strings")
        if len(flat) > count:
            break
    if len(flat) != count:
        raise InvalidInput(
            f"input '{name}': 'data' does not hold the {count} strings its shape needs"
        )
    out = np.empty(count, dtype=object)
    out[:] = flat
    return out


def _flag(parameters: dict[str, Any], key: str, where: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}.{key} must be true or false, got {value!r}")
    return value


def _decode_outputs(items: object, output_format: OutputFormat) -> tuple[str, ...] | None:
    if items is None:
        return None
    if not isinstance(items, list):
        raise InvalidInput("'outputs' must be a list")
    names = []  # repeats are dropped by RequestBuilder.want_outputs
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("each entry of 'outputs' needs a string 'name'")
        name = item["name"]
        parameters = _mapping(item.get("parameters"), f"outputs.{name}.parameters")
        if "classification" in parameters:
            raise InvalidInput(f"output '{name}': the classification extension is not supported")
        if "binary_data" in parameters:
            output_format.binary[name] = _flag(parameters, "binary_data", f"outputs.{name}")
        names.append(name)
    return tuple(names)


def encode_response(
    response: InferResponse, output_format: OutputFormat
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the length of its JSON header."""
    outputs = []
    blobs = []
    for name, array in response.outputs.items():
        datatype = _datatype(name, array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype.value, "shape": array.shape}
        if output_format.is_binary(name):
            blob = to_raw(array, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _to_json(name, array, datatype)
        outputs.append(entry)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id is not None:
        document["id"] = response.id
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join((header, *blobs)), len(header)


def _datatype(name: str, array: np.ndarray) -> DataType:
    try:
        return DataType.from_numpy(array.dtype)
    except ValueError as exc:
        raise InferenceFailed(f"output '{name}': {exc}") from None


def _to_json(name: str, array: np.ndarray, datatype: DataType) -> Any:
    if datatype is DataType.BYTES:
        try:
            return [
                item.decode("utf-8") if isinstance(item, bytes) else str(item)
                for item in array.reshape(-1)
            ]
        except UnicodeDecodeError:
            raise InvalidInput(
                f"output '{name}' holds bytes that are not UTF-8 text; ask for it with "
                "binary_data: true"
            ) from None
    return np.ascontiguousarray(array).reshape(-1)
