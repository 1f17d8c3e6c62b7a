"""gRPC messages <-> core requests and responses: raw contents and typed contents."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from modelport.core.errors import InvalidInput
from modelport.core.types import DataType, InferResponse
from modelport.core.validate import InputGuard, ValidatedRequest, element_count, integers_fit
from modelport.frontends.grpc.generated import inference_pb2 as pb
from modelport.frontends.raw_tensors import from_raw, to_raw

MessageT = TypeVar("MessageT", bound=Message)

# The typed `contents` field that carries each datatype (FP16 has none: it travels raw only).
_CONTENTS_FIELD = {
    DataType.BOOL: "bool_contents",
    DataType.INT8: "int_contents",
    DataType.INT16: "int_contents",
    DataType.INT32: "int_contents",
    DataType.INT64: "int64_contents",
    DataType.UINT8: "uint_contents",
    DataType.UINT16: "uint_contents",
    DataType.UINT32: "uint_contents",
    DataType.UINT64: "uint64_contents",
    DataType.FP32: "fp32_contents",
    DataType.FP64: "fp64_contents",
    DataType.BYTES: "bytes_contents",
}


def decode_request(
    message: pb.ModelInferRequest,
    guard: InputGuard,
    model: str,
    version: str | None,
    deadline: float | None = None,
) -> ValidatedRequest:
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs"
        )
    builder = guard.builder(model, version)
    for index, tensor in enumerate(message.inputs):
        name = tensor.name
        spec, shape = builder.declare(name, tensor.datatype, list(tensor.shape))
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input '{name}' has typed contents but the request also carries "
                    "raw_input_contents; use one or the other"
                )
            builder.add(name, from_raw(name, spec.datatype, shape, raw[index]))
        else:
            builder.add(name, _from_contents(name, spec.datatype, shape, tensor.contents))
    if message.outputs:
        builder.want_outputs(output.name for output in message.outputs)
    return builder.finish(
        request_id=message.id or None,
        parameters=parameter_values(message.parameters),
        deadline=deadline,
    )


def _from_contents(
    name: str, datatype: DataType, shape: tuple[int, ...], contents: pb.InferTensorContents
) -> np.ndarray:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}': {datatype.value} travels in raw_input_contents only")
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': contents.{field} holds {len(values)} elements but shape "
            f"{list(shape)} needs {count}"
        )
    if datatype is DataType.BYTES:
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    wide_type = {"i": np.int64, "u": np.uint64}.get(datatype.numpy_dtype.kind)
    wide = np.array(values, dtype=wide_type)
    target = datatype.numpy_dtype
    if target.kind in "iu" and not integers_fit(wide, datatype):
        raise InvalidInput(f"input '{name}': a value is out of range for {datatype.value}")
    return wide.astype(target, copy=False).reshape(shape)


def parameter_values(parameters: Any) -> dict[str, Any]:
    """A protobuf parameter map (InferParameter or ModelRepositoryParameter) -> plain values."""
    return {
        key: getattr(value, value.WhichOneof("parameter_choice") or "bool_param")
        for key, value in parameters.items()
    }


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id or ""
    )
    for name, array in response.outputs.items():
        datatype = DataType.from_numpy(array.dtype)
        message.outputs.add(name=name, datatype=datatype.value, shape=array.shape)
        message.raw_output_contents.append(to_raw(array, datatype))
    return message


def from_dict(document: Mapping[str, object], message: MessageT) -> MessageT:
    """Fill a message from the same dictionaries the REST frontend serves (not the hot path)."""
    return json_format.ParseDict(document, message, ignore_unknown_fields=True)
