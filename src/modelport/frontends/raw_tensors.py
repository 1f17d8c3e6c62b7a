"""Raw tensor bytes, shared by the REST binary extension and gRPC raw contents.

Fixed-size datatypes are little-endian row-major arrays (decoded as zero-copy numpy views); BYTES
elements are each a 4-byte little-endian length followed by that many bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from modelport.core.errors import InvalidInput
from modelport.core.types import DataType
from modelport.core.validate import element_count

_LENGTH_PREFIX = struct.Struct("<I")


def from_raw(
    name: str, datatype: DataType, shape: tuple[int, ...], chunk: bytes | memoryview
) -> np.ndarray:
    count = element_count(shape)
    if datatype is DataType.BYTES:
        return bytes_elements(name, memoryview(chunk), count).reshape(shape)
    expected = count * datatype.itemsize
    if len(chunk) != expected:
        raise InvalidInput(
            f"input '{name}': {len(chunk)} bytes of binary data, but shape {list(shape)} of "
            f"{datatype.value} needs {expected}"
        )
    if datatype is DataType.BOOL and count and np.frombuffer(chunk, dtype=np.uint8).max() > 1:
        raise InvalidInput(f"input '{name}': BOOL bytes must be 0 or 1")
    return np.frombuffer(chunk, dtype=datatype.numpy_dtype).reshape(shape)


def bytes_elements(name: str, chunk: memoryview, count: int) -> np.ndarray:
    if len(chunk) < 4 * count:  # each element needs its 4-byte length: refuse before allocating
        raise InvalidInput(
            f"input '{name}': {len(chunk)} bytes cannot hold {count} BYTES elements "
            "(each needs a 4-byte length prefix)"
        )
    out = np.empty(count, dtype=object)
    position, end = 0, len(chunk)
    for index in range(count):
        if position + 4 > end:
            raise InvalidInput(f"input '{name}': BYTES data ends before element {index}")
        (length,) = _LENGTH_PREFIX.unpack_from(chunk, position)
        position += 4
        if position + length > end:
            raise InvalidInput(
                f"input '{name}': BYTES element {index} claims {length} bytes past the end"
            )
        out[index] = bytes(chunk[position : position + length])
        position += length
    if position != end:
        raise InvalidInput(
            f"input '{name}': {end - position} bytes left over after {count} BYTES elements"
        )
    return out


def to_raw(array: np.ndarray, datatype: DataType) -> bytes:
    if datatype is DataType.BYTES:
        parts = []
        for item in array.reshape(-1):
            value = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(_LENGTH_PREFIX.pack(len(value)))
            parts.append(value)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()
