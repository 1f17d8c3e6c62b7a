"""Checks a request against a model's signature before any tensor buffer is allocated.

Frontends call `InputGuard.check_header` with each input's declared name, datatype and shape as
soon as they have parsed them, and decode the data only afterwards; `check_arrays` is the final
check on decoded arrays, so callers that skip the header step are still safe.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from modelport.core.errors import InvalidInput, PayloadTooLarge
from modelport.core.types import DataType, TensorSpec


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
        return spec

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


def _datatype_of(name: str, array: np.ndarray) -> str:
    try:
        return DataType.from_numpy(array.dtype).value
    except ValueError as exc:
        raise InvalidInput(f"input '{name}': {exc}") from None
