"""Checks a request against a model's signature before any tensor buffer is allocated.

The one decode skeleton for every frontend: a frontend asks the version's `InputGuard` for a
`RequestBuilder`, declares each input's name, datatype and shape as soon as it has parsed them
(the guard checks them before the data is decoded), adds the decoded array, names the outputs it
wants, and `finish()`es. Only the guard makes a `ValidatedRequest`, and the data plane runs
nothing else: "validated" is a type, not a convention. Callers that hold decoded arrays already
(pipelines, TF Serving's rows) use `InputGuard.validate`, the full check on arrays.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from modelport.core.errors import InvalidInput, PayloadTooLarge
from modelport.core.types import DataType, InferRequest, TensorSpec


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_bytes: int = 64 * 1024 * 1024
    max_tensor_elements: int = 1 << 26


def parse_shape(name: str, shape: object) -> tuple[int, ...]:
    """A wire shape as a tuple of non-negative ints, or a clear error."""
    if not isinstance(shape, list | tuple):
        raise InvalidInput(f"input '{name}': shape must be a list of integers, got {shape!r}")
    dims = []
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise InvalidInput(
                f"input '{name}': shape {list(shape)} must hold non-negative integers"
            )
        dims.append(dim)
    return tuple(dims)


def timeout_from_microseconds(value: object) -> float | None:
    """The v2 `timeout` request parameter (microseconds, Triton's unit) in seconds; 0 means none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(
            f"parameter 'timeout' must be a non-negative integer (microseconds), got {value!r}"
        )
    return value / 1e6 if value else None


def integers_fit(values: np.ndarray, datatype: DataType) -> bool:
    """Whether integer values lie in the datatype's range (so casting cannot wrap them)."""
    info = np.iinfo(datatype.numpy_dtype)
    return not values.size or (values.min() >= info.min and values.max() <= info.max)


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


Shape = tuple[int, ...]


class _Proof:
    """Only this module has an instance: proof that a guard made the ValidatedRequest."""


_GUARD_ONLY: Final = _Proof()


class ValidatedRequest:
    """A request one model version's guard checked: names, datatypes, shapes, limits, batch
    agreement, requested outputs. Made only by `RequestBuilder.finish` and `InputGuard.validate`."""

    __slots__ = ("guard", "request")

    def __init__(self, request: InferRequest, guard: InputGuard, proof: _Proof) -> None:
        if proof is not _GUARD_ONLY:
            raise TypeError("a ValidatedRequest comes from InputGuard.builder() or .validate()")
        self.request = request
        self.guard = guard


class RequestBuilder:
    """Assembles one request input by input, checking each header before its data is decoded."""

    __slots__ = ("_arrays", "_declared", "_guard", "_model", "_outputs", "_version")

    def __init__(self, guard: InputGuard, model: str, version: str | None) -> None:
        self._guard = guard
        self._model = model
        self._version = version
        self._declared: dict[str, tuple[TensorSpec, tuple[int, ...]]] = {}
        self._arrays: dict[str, np.ndarray] = {}
        self._outputs: tuple[str, ...] | None = None

    def declare(self, name: object, datatype: object, shape: object) -> tuple[TensorSpec, Shape]:
        """Check one input's header; returns its spec and shape, for decoding its data."""
        if not isinstance(name, str):
            raise InvalidInput("each input needs a string 'name'")
        if name in self._declared:
            raise InvalidInput(f"input '{name}' appears more than once")
        spec, dims = self._guard.checked_header(name, datatype, shape)
        self._declared[name] = spec, dims
        return spec, dims

    def add(self, name: str, array: np.ndarray) -> None:
        """The decoded data of a declared input; it must have the declared shape and type."""
        declared = self._declared.get(name)
        if declared is None:
            raise InvalidInput(f"input '{name}' was not declared before its data")
        spec, dims = declared
        if array.shape != dims or array.dtype != spec.datatype.numpy_dtype:
            raise InvalidInput(
                f"input '{name}': decoded to {array.dtype} {list(array.shape)}, not the declared "
                f"{spec.datatype.value} {list(dims)}"
            )
        self._arrays[name] = array

    def want_outputs(self, names: Iterable[str]) -> None:
        """The outputs asked for, in order, each once; none named means all of them."""
        wanted = tuple(dict.fromkeys(names))
        self._guard.check_outputs(wanted)
        self._outputs = wanted or None

    def finish(
        self,
        *,
        request_id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        deadline: float | None = None,
    ) -> ValidatedRequest:
        """The request, once every input is there; `deadline` (seconds, e.g. gRPC's) caps the
        `timeout` parameter."""
        if len(self._declared) != len(self._arrays):  # add() takes declared names only
            missing = set(self._declared).difference(self._arrays)
            raise InvalidInput(f"input(s) declared without data: {', '.join(sorted(missing))}")
        if not self._arrays:
            raise InvalidInput("the request has no inputs")
        self._guard.check_complete(self._arrays)
        # the codecs hand over a dict of their own: no copy (the common case has none at all)
        params = parameters if isinstance(parameters, dict) else dict(parameters or {})
        timeout = timeout_from_microseconds(params["timeout"]) if "timeout" in params else None
        if deadline is not None:
            timeout = deadline if timeout is None else min(deadline, timeout)
        request = InferRequest(
            model_name=self._model,
            inputs=self._arrays,
            model_version=self._version,
            outputs=self._outputs,
            id=request_id,
            parameters=params,
            timeout=timeout,
        )
        return ValidatedRequest(request, self._guard, _GUARD_ONLY)


class InputGuard:
    """A model version's inputs, outputs and limits, and the checks requests must pass."""

    def __init__(
        self,
        inputs: Iterable[TensorSpec],
        outputs: Iterable[TensorSpec],
        max_batch_size: int,
        limits: Limits,
    ) -> None:
        self.inputs = {spec.name: spec for spec in inputs}
        self.outputs = {spec.name: spec for spec in outputs}
        self.max_batch_size = max_batch_size
        self.limits = limits

    def check_header(self, name: str, datatype: object, shape: object) -> TensorSpec:
        """Validate one input's declared name, datatype and shape; returns its spec."""
        return self.checked_header(name, datatype, shape)[0]

    def checked_header(
        self, name: str, datatype: object, shape: object
    ) -> tuple[TensorSpec, Shape]:
        """check_header, returning the spec and the parsed shape."""
        spec = self.inputs.get(name)
        if spec is None:
            expected = ", ".join(sorted(self.inputs))
            raise InvalidInput(f"unexpected input '{name}' (the model takes: {expected})")
        if datatype != spec.datatype.value:
            raise InvalidInput(
                f"input '{name}': datatype {datatype!r} does not match the model's "
                f"{spec.datatype.value}"
            )
        dims = parse_shape(name, shape)
        self._check_dims(spec, dims)
        elements = element_count(dims)
        if elements > self.limits.max_tensor_elements:
            raise PayloadTooLarge(
                f"input '{name}': shape {list(dims)} has {elements} elements, more than the "
                f"limit of {self.limits.max_tensor_elements}"
            )
        if any(dim > self.limits.max_tensor_elements for dim in dims):
            raise PayloadTooLarge(
                f"input '{name}': a dimension of shape {list(dims)} exceeds the limit of "
                f"{self.limits.max_tensor_elements} elements"
            )
        return spec, dims

    def _check_dims(self, spec: TensorSpec, dims: tuple[int, ...]) -> None:
        expected = list(spec.shape)
        if len(dims) != len(expected) or any(
            want != -1 and got != want for got, want in zip(dims, expected, strict=True)
        ):
            raise InvalidInput(
                f"input '{spec.name}': shape {list(dims)} does not match the model's {expected}"
            )
        if self.max_batch_size > 0 and dims and dims[0] == 0:
            raise InvalidInput(f"input '{spec.name}': the batch size (first dimension) is 0")
        if self.max_batch_size > 0 and dims and dims[0] > self.max_batch_size:
            raise InvalidInput(
                f"input '{spec.name}': batch size {dims[0]} exceeds the model's max_batch_size "
                f"{self.max_batch_size}"
            )

    def check_complete(self, arrays: dict[str, np.ndarray]) -> None:
        """Every input is present and, for a batched model, all agree on the batch size."""
        missing = set(self.inputs).difference(arrays)
        if missing:
            raise InvalidInput(f"missing input(s): {', '.join(sorted(missing))}")
        if self.max_batch_size > 0:
            batch_sizes = {array.shape[0] for array in arrays.values() if array.ndim}
            if len(batch_sizes) > 1:
                raise InvalidInput(
                    f"inputs disagree on the batch size (first dimension): {sorted(batch_sizes)}"
                )

    def check_outputs(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self.outputs:
                expected = ", ".join(sorted(self.outputs))
                raise InvalidInput(f"unknown output '{name}' (the model returns: {expected})")

    def check_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """The full check on decoded arrays: names, datatypes, shapes, batch agreement."""
        self.check_complete(arrays)
        for name, array in arrays.items():
            self.check_header(name, _datatype_of(name, array), list(array.shape))

    def builder(self, model: str, version: str | None) -> RequestBuilder:
        return RequestBuilder(self, model, version)

    def validate(self, request: InferRequest) -> ValidatedRequest:
        """A request whose arrays are decoded already, checked in full."""
        if not request.inputs:
            raise InvalidInput("the request has no inputs")
        self.check_arrays(request.inputs)
        if request.outputs is not None:
            self.check_outputs(request.outputs)
        return ValidatedRequest(request, self, _GUARD_ONLY)


def _datatype_of(name: str, array: np.ndarray) -> str:
    try:
        return DataType.from_numpy(array.dtype).value
    except ValueError as exc:
        raise InvalidInput(f"input '{name}': {exc}") from None
