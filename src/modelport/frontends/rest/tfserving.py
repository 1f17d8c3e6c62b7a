"""TF Serving's REST API on the same port as v2: model status, metadata and predict, so clients
written for TF Serving work unchanged. Errors come back as {"error": "..."}, as TF Serving sends.

Predict takes the row format (`instances`: one entry per example, a dict per example when the
model has several inputs) and the columnar format (`inputs`: a tensor, or a dict of tensors) and
answers `predictions` or `outputs` in the same format. Binary values travel as {"b64": "..."}.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.core.data_plane import DataPlane, ModelHandle, ModelState, VersionStatus
from modelport.core.errors import InvalidInput
from modelport.core.types import DataType, InferRequest, TensorSpec
from modelport.core.validate import InputGuard, ValidatedRequest
from modelport.frontends.off_loop import OffLoop
from modelport.frontends.rest.request_json import MAX_DATA_NESTING, parse_json_object
from modelport.frontends.rest.v2 import json_response, read_body

_STATE = {
    ModelState.LOADING: "LOADING",
    ModelState.READY: "AVAILABLE",
    ModelState.UNAVAILABLE: "END",
    ModelState.FAILED: "END",
}
_TF_DTYPE = {
    DataType.BOOL: "DT_BOOL",
    DataType.UINT8: "DT_UINT8",
    DataType.UINT16: "DT_UINT16",
    DataType.UINT32: "DT_UINT32",
    DataType.UINT64: "DT_UINT64",
    DataType.INT8: "DT_INT8",
    DataType.INT16: "DT_INT16",
    DataType.INT32: "DT_INT32",
    DataType.INT64: "DT_INT64",
    DataType.FP16: "DT_HALF",
    DataType.FP32: "DT_FLOAT",
    DataType.FP64: "DT_DOUBLE",
    DataType.BYTES: "DT_STRING",
}
SIGNATURE = "serving_default"


class TFServingEndpoints:
    def __init__(self, plane: DataPlane, max_request_bytes: int, off_loop: OffLoop) -> None:
        self.plane = plane
        self.max_request_bytes = max_request_bytes
        self._off_loop = off_loop

    def routes(self) -> list[Route]:
        routes = []
        for suffix in ("", "/versions/{version}", "/labels/{label}"):
            base = "/v1/models/{model}" + suffix
            routes += [
                Route(base, self.status, methods=["GET"]),
                Route(f"{base}/metadata", self.metadata, methods=["GET"]),
                Route(f"{base}:predict", self.predict, methods=["POST"]),
            ]
        return routes

    async def status(self, request: Request) -> Response:
        name = request.path_params["model"]
        wanted = _requested(request)
        if wanted is None:
            statuses = self.plane.version_statuses(name)
        else:
            handle = self.plane.resolve(name, wanted)
            statuses = [VersionStatus(handle.version, ModelState.READY, "")]
        return json_response({"model_version_status": [_status(s) for s in statuses]})

    async def metadata(self, request: Request) -> Response:
        name = request.path_params["model"]
        handle = self.plane.resolve(name, _requested(request))
        signature = {
            "inputs": {spec.name: _tensor_info(spec) for spec in handle.signature.inputs},
            "outputs": {spec.name: _tensor_info(spec) for spec in handle.signature.outputs},
            "method_name": "tensorflow/serving/predict",
        }
        return json_response(
            {
                "model_spec": {"name": name, "signature_name": "", "version": handle.version},
                "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}},
            }
        )

    async def predict(self, request: Request) -> Response:
        name, wanted = request.path_params["model"], _requested(request)
        handle = self.plane.resolve(name, wanted)
        row_format = False

        async def decode(guard: InputGuard) -> ValidatedRequest:
            nonlocal row_format
            body = await read_body(request, self.max_request_bytes)
            decoded = await self._off_loop.run_if_large(
                len(body), _decode_predict, body, handle, guard, wanted
            )
            row_format, validated = decoded
            return validated

        response = await self.plane.infer(handle, decode)
        outputs = {key: _jsonable(value) for key, value in response.outputs.items()}
        if row_format:
            body: dict[str, Any] = {"predictions": _to_rows(outputs)}
        else:
            body = {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
        return Response(orjson.dumps(body), media_type="application/json")


def _decode_predict(
    body: bytes, handle: ModelHandle, guard: InputGuard, version: str | None
) -> tuple[bool, ValidatedRequest]:
    """A predict body -> (whether it used the row format, the validated request)."""
    try:
        return _decode_predict_document(parse_json_object(body), handle, guard, version)
    except RecursionError:  # a backstop: nesting is bounded where the values are walked
        raise InvalidInput("the request body is nested too deeply") from None


def _decode_predict_document(
    document: dict[str, Any], handle: ModelHandle, guard: InputGuard, version: str | None
) -> tuple[bool, ValidatedRequest]:
    signature_name = document.get("signature_name", SIGNATURE)
    if signature_name != SIGNATURE:
        raise InvalidInput(
            f"model '{handle.name}' has only the signature '{SIGNATURE}', not '{signature_name}'"
        )
    row_format = "instances" in document
    if row_format == ("inputs" in document):
        raise InvalidInput("the request needs exactly one of 'instances' or 'inputs'")
    specs = {spec.name: spec for spec in handle.signature.inputs}
    if row_format:
        inputs = _from_rows(document["instances"], specs)
    else:
        inputs = _from_columns(document["inputs"], specs)
    request = InferRequest(model_name=handle.name, model_version=version, inputs=inputs)
    return row_format, guard.validate(request)


def _requested(request: Request) -> str | None:
    return request.path_params.get("version") or request.path_params.get("label")


def _status(status: VersionStatus) -> dict[str, Any]:
    failed = status.state is ModelState.FAILED
    return {
        "version": status.version,
        "state": _STATE[status.state],
        "status": {
            "error_code": "UNKNOWN" if failed else "OK",
            "error_message": status.reason if failed else "",
        },
    }


def _tensor_info(spec: TensorSpec) -> dict[str, Any]:
    return {
        "dtype": _TF_DTYPE.get(spec.datatype, "DT_INVALID"),
        "tensor_shape": {"dim": [{"size": str(d)} for d in spec.shape], "unknown_rank": False},
        "name": spec.name,
    }


def _from_rows(instances: Any, specs: dict[str, TensorSpec]) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty list, one entry per example")
    first = instances[0]
    names_inputs = isinstance(first, dict) and first.keys() != {"b64"}
    if len(specs) == 1 and not names_inputs:
        name, spec = next(iter(specs.items()))
        return {name: _array(instances, spec, f"'instances' for input '{name}'")}
    if not all(isinstance(row, dict) for row in instances):
        raise InvalidInput(
            f"the model has inputs {sorted(specs)}: each instance must be an object naming them"
        )
    columns: dict[str, list[Any]] = {name: [] for name in specs}
    for number, row in enumerate(instances):
        unknown = set(row) - set(specs)
        if unknown:
            raise InvalidInput(f"instance {number} names unknown input(s) {sorted(unknown)}")
        for name in specs:
            if name not in row:
                raise InvalidInput(f"instance {number} lacks input '{name}'")
            columns[name].append(row[name])
    return {
        name: _array(values, specs[name], f"input '{name}'") for name, values in columns.items()
    }


def _from_columns(inputs: Any, specs: dict[str, TensorSpec]) -> dict[str, np.ndarray]:
    if not isinstance(inputs, dict) or set(inputs) - set(specs):
        if len(specs) == 1:
            name, spec = next(iter(specs.items()))
            return {name: _array(inputs, spec, f"'inputs' for input '{name}'")}
        raise InvalidInput(f"'inputs' must be an object naming the model's inputs {sorted(specs)}")
    return {name: _array(value, specs[name], f"input '{name}'") for name, value in inputs.items()}


def _array(value: Any, spec: TensorSpec, where: str) -> np.ndarray:
    if spec.datatype is DataType.BYTES:
        return np.array(_decode_binary(value, where), dtype=object)
    try:
        return np.array(value, dtype=spec.datatype.numpy_dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(
            f"{where}: not a regular nested list of {spec.datatype.value} values ({exc})"
        ) from None


def _decode_binary(value: Any, where: str, depth: int = 0) -> Any:
    if isinstance(value, list):
        if depth == MAX_DATA_NESTING:
            raise InvalidInput(
                f"{where}: nested deeper than {MAX_DATA_NESTING} levels (a tensor has at most "
                f"{MAX_DATA_NESTING} dimensions)"
            )
        return [_decode_binary(item, where, depth + 1) for item in value]
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise InvalidInput('a binary value must be written {"b64": "<base64>"}')
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error as exc:
            raise InvalidInput(f"invalid base64: {exc}") from None
    if isinstance(value, str):
        return value.encode()
    raise InvalidInput(f"expected a string or {{'b64': ...}}, got {type(value).__name__}")


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype == object:
        return (
            [_text_or_b64(item) for item in array.ravel()]
            if array.ndim == 1
            else [_jsonable(row) for row in array]
        )
    return array.tolist()


def _text_or_b64(item: Any) -> Any:
    if isinstance(item, bytes):
        try:
            return item.decode()
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(item).decode()}
    return item


def _to_rows(outputs: dict[str, Any]) -> list[Any]:
    if len(outputs) == 1:
        return list(next(iter(outputs.values())))
    names = list(outputs)
    count = len(outputs[names[0]])
    return [{name: outputs[name][row] for name in names} for row in range(count)]
