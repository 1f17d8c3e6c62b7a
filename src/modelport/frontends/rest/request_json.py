"""The JSON of a v2 infer request, parsed with simdjson so tensor data never becomes Python floats.

orjson + numpy turn a 12,288-number `data` array into 12,288 float objects and then walk them
(660 us for the 112 KB cnn body of the shared bench, on the benchmark machine); simdjson parses
the document and copies such an array straight into a float64 buffer (250 us). Floating-point
inputs take that path; everything else in the document (names, shapes, parameters, integer,
boolean and BYTES data) comes back as plain Python objects, exactly as orjson would give them.
A document simdjson refuses (invalid, or with integers beyond 64 bits) is parsed by orjson, so
what is accepted and every error message are orjson's.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import orjson
import simdjson

from modelport.core.errors import InvalidInput
from modelport.core.validate import element_count

FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
MAX_DATA_NESTING = 64
"""Levels of nested lists a tensor's JSON data may have: one per dimension, and a tensor has at
most 64 (numpy's limit). Deeper data is refused by name before any recursive walk of it."""
REUSED_PARSER_BYTES = 1 << 20
"""A parser keeps buffers as large as the largest document it parsed; one per thread is reused
for bodies up to this size, and larger ones get a parser of their own that is then dropped."""

_local = threading.local()


def parse_json_object(body: bytes | memoryview) -> dict[str, Any]:
    """Any JSON request body that must be an object (orjson)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON in the request body: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput("the request body must be a JSON object")
    return document


def parse_request(body: bytes | memoryview) -> dict[str, Any]:
    """An infer request's document; the `data` of floating-point inputs as flat float64 arrays."""
    refused = False
    try:
        document = _materialize(_parse(bytes(body)))
    except (ValueError, RuntimeError):  # UnicodeDecodeError is a ValueError
        refused = True  # decided outside the handler, so no traceback keeps a simdjson proxy
    if refused or document is None:
        return parse_json_object(body)
    return document


def _parse(body: bytes) -> Any:
    if len(body) > REUSED_PARSER_BYTES:
        return simdjson.Parser().parse(body)
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    try:
        return parser.parse(body)
    except RuntimeError:
        # The previous document is still referenced (say, by a traceback kept somewhere): this
        # parser cannot be reused until that is gone, so this thread starts a new one.
        parser = _local.parser = simdjson.Parser()
        return parser.parse(body)


def _materialize(document: Any) -> dict[str, Any] | None:
    if not isinstance(document, simdjson.Object):
        return None
    out: dict[str, Any] = {}
    for key in document.keys():  # noqa: SIM118 (a simdjson Object iterates its keys only this way)
        value = document[key]
        if key == "inputs" and isinstance(value, simdjson.Array):
            out[key] = [_input(item) for item in value]
        else:
            out[key] = _plain(value)
    return out


def _input(item: Any) -> Any:
    if not isinstance(item, simdjson.Object):
        return _plain(item)
    out = {key: _plain(item[key]) for key in item.keys() if key != "data"}  # noqa: SIM118
    if "data" in item:
        data = item["data"]
        if isinstance(data, simdjson.Array) and _flat_floats(data, out):
            try:
                values = np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64)
            except (TypeError, ValueError):
                values = None  # not all numbers: the plain list gets the usual, precise error
            if values is not None and len(values) == len(data):  # else it held nested arrays
                out["data"] = values
                return out
        out["data"] = _plain(data)
    return out


def _flat_floats(data: simdjson.Array, item: dict[str, Any]) -> bool:
    """A floating-point input whose data looks like one flat array of the shape's element count.
    Nested arrays take the plain path, where numpy checks they are regular: as_buffer flattens
    whatever it is given, so the caller also checks it returned as many numbers as the array
    has elements."""
    datatype = item.get("datatype")  # any JSON value: a list is unhashable
    if not isinstance(datatype, str) or datatype not in FLOAT_DATATYPES:
        return False
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        return False
    return len(data) == element_count(shape)


def _plain(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value
