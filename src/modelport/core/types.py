"""Tensor datatypes and the request/response objects that cross the core boundary."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np


class DataType(enum.StrEnum):
    """The v2 protocol's tensor datatypes (names as they appear on the wire)."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return _TO_NUMPY[self]

    @property
    def itemsize(self) -> int:
        """Bytes per element on the wire; 0 for BYTES, whose elements vary in length."""
        return 0 if self is DataType.BYTES else _TO_NUMPY[self].itemsize

    @property
    def triton_name(self) -> str:
        """The name Triton's model configuration uses (TYPE_FP32, TYPE_STRING, ...)."""
        return "TYPE_STRING" if self is DataType.BYTES else f"TYPE_{self.value}"

    @classmethod
    def parse(cls, name: object) -> DataType:
        if isinstance(name, str) and name in cls._value2member_map_:
            return cls(name)
        known = ", ".join(member.value for member in cls)
        raise ValueError(f"unknown datatype {name!r} (expected one of {known})")

    @classmethod
    def from_numpy(cls, dtype: np.dtype[Any]) -> DataType:
        if dtype.kind in "OSU":
            return cls.BYTES
        try:
            return _FROM_NUMPY[np.dtype(dtype)]
        except KeyError:
            raise ValueError(f"numpy dtype {dtype} has no v2 datatype") from None


_TO_NUMPY: dict[DataType, np.dtype[Any]] = {
    DataType.BOOL: np.dtype(np.bool_),
    DataType.UINT8: np.dtype(np.uint8),
    DataType.UINT16: np.dtype(np.uint16),
    DataType.UINT32: np.dtype(np.uint32),
    DataType.UINT64: np.dtype(np.uint64),
    DataType.INT8: np.dtype(np.int8),
    DataType.INT16: np.dtype(np.int16),
    DataType.INT32: np.dtype(np.int32),
    DataType.INT64: np.dtype(np.int64),
    DataType.FP16: np.dtype(np.float16),
    DataType.FP32: np.dtype(np.float32),
    DataType.FP64: np.dtype(np.float64),
    DataType.BYTES: np.dtype(np.object_),
}
_FROM_NUMPY = {dtype: datatype for datatype, dtype in _TO_NUMPY.items() if dtype.kind != "O"}


class TensorMetadata(TypedDict):
    """A tensor as v2 metadata describes it."""

    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named tensor a model takes or returns; -1 in `shape` marks a dimension of any size."""

    name: str
    datatype: DataType
    shape: tuple[int, ...]

    def as_dict(self) -> TensorMetadata:
        return {"name": self.name, "datatype": self.datatype.value, "shape": list(self.shape)}


@dataclass(slots=True)
class InferRequest:
    """One inference call as the core sees it, whatever protocol carried it.

    BYTES tensors are numpy object arrays of `bytes`. `outputs` names the outputs wanted, or None
    for all of them.
    """

    model_name: str
    inputs: dict[str, np.ndarray]
    model_version: str | None = None
    outputs: tuple[str, ...] | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    """Seconds the request may wait in its model's queue before it is dropped (504)."""


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
