"""gRPC messages <-> core requests and responses: raw contents and typed contents."""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import json_format

from modelport.core.errors import InvalidInput
from modelport.core.types import DataType, InferRequest, InferResponse
from modelport.core.validate import (
    InputGuard,
    element_count,
    integers_fit,
    timeout_from_microseconds,
)
from modelport.frontends.grpc.generated import inference_pb2 as pb
from modelport.frontends.raw_tensors import from_raw, to_raw

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
    message: pb.ModelInferRequest, guard: InputGuard, model: str, version: str | None
) -> InferRequest:
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs"
        )
    if not message.inputs:
        raise InvalidInput("the request has no inputs")
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(message.inputs):
        name = tensor.name
        if name in arrays:
            raise InvalidInput(f"input '{name}' appears more than once")
        spec = guard.check_header(name, tensor.datatype, list(tensor.shape))
        shape = tuple(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input '{name}' has typed contents but the request also carries "
                    "raw_input_contents; use one or the other"
                )
            arrays[name] = from_raw(name, spec.datatype, shape, raw[index])
        else:
            arrays[name] = _from_contents(name, spec.datatype, shape, tensor.contents)
    guard.check_complete(arrays)
    wanted = tuple(dict.fromkeys(output.name for output in message.outputs)) or None
    if wanted is not None:
        guard.check_outputs(wanted)
    parameters = parameter_values(message.parameters)
    return InferRequest(
        model_name=model,
        model_version=version,
        inputs=arrays,
        outputs=wanted,
        id=message.id or None,
        parameters=parameters,
        timeout=timeout_from_microseconds(parameters.get("timeout")),
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


def from_dict(document: dict[str, Any], message: Any) -> Any:
    """Fill a message from the same dictionaries the REST frontend serves (not the hot path)."""
    return json_format.ParseDict(document, message, ignore_unknown_fields=True)
