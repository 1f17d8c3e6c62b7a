"""v2 REST endpoints (KServe Open Inference Protocol) plus Triton's config and statistics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.core.errors import ErrorKind, InvalidInput, ModelportError, PayloadTooLarge
from modelport.core.server import InferenceServer
from modelport.frontends import model_control, triton_config
from modelport.frontends.compression import choose_encoding, decode_body, encode_body
from modelport.frontends.rest.v2_codec import (
    HEADER_LENGTH,
    decode_request,
    encode_response,
    parse_header_length,
    parse_json_object,
)

JSON = "application/json"
OFF_LOOP_BYTES = 256 * 1024
LARGE_BODIES_AT_ONCE = 2
Result = TypeVar("Result")
MAX_CONTROL_BODY = 2 * 1024 * 1024
MIN_COMPRESSED_BYTES = 1024
"""Smaller responses go out uncompressed even when the client accepts gzip: no gain, only CPU."""


def json_response(content: object, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type=JSON)


def error_response(message: str, status: int) -> Response:
    return json_response({"error": message}, status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes without buffering it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise InvalidInput(f"Content-Length {declared!r} is not an integer") from None
        if length > limit:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit}")
    chunks = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class V2Endpoints:
    def __init__(self, server: InferenceServer, max_request_bytes: int) -> None:
        self.server = server
        self.max_request_bytes = max_request_bytes
        self._large_bodies = asyncio.Semaphore(LARGE_BODIES_AT_ONCE)

    async def _off_loop_if_large(
        self, size: int, function: Callable[..., Result], *args: Any
    ) -> Result:
        """Small bodies are decoded inline (a thread hop would cost more than the work); large
        ones in a worker thread, a few at a time, so one big request cannot stall the others."""
        if size < OFF_LOOP_BYTES:
            return function(*args)
        async with self._large_bodies:
            return await asyncio.to_thread(function, *args)

    def routes(self) -> list[Route]:
        model = "/v2/models/{model}"
        version = "/v2/models/{model}/versions/{version}"
        routes = [
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route("/v2", self.metadata, methods=["GET"]),
            Route("/v2/models/stats", self.statistics, methods=["GET"]),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/v2/repository/models/{model}/load", self.load_model, methods=["POST"]),
            Route("/v2/repository/models/{model}/unload", self.unload_model, methods=["POST"]),
        ]
        for prefix in (model, version):
            routes += [
                Route(prefix, self.model_metadata, methods=["GET"]),
                Route(f"{prefix}/ready", self.model_ready, methods=["GET"]),
                Route(f"{prefix}/infer", self.infer, methods=["POST"]),
                Route(f"{prefix}/config", self.model_config, methods=["GET"]),
                Route(f"{prefix}/stats", self.statistics, methods=["GET"]),
            ]
        return routes

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        if self.server.ready():
            return json_response({"ready": True})
        return json_response({"ready": False, "error": "the server is not ready"}, 400)

    async def metadata(self, request: Request) -> Response:
        return json_response(self.server.metadata())

    async def model_metadata(self, request: Request) -> Response:
        name, version = _model_params(request)
        return json_response(self.server.model_metadata(name, version))

    async def model_ready(self, request: Request) -> Response:
        name, version = _model_params(request)
        try:
            self.server.model(name, version)
        except ModelportError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                raise
            return json_response({"name": name, "ready": False, "error": exc.message}, 400)
        return json_response({"name": name, "ready": True})

    async def model_config(self, request: Request) -> Response:
        name, version = _model_params(request)
        return json_response(triton_config.model_config(self.server.model(name, version)))

    async def statistics(self, request: Request) -> Response:
        name, version = _model_params(request)
        return json_response({"model_stats": self.server.statistics(name, version)})

    async def repository_index(self, request: Request) -> Response:
        body = await read_body(request, 64 * 1024)
        options = parse_json_object(body) if body.strip() else {}
        rows = await self.server.manager.index()
        if options.get("ready") is True:
            rows = [row for row in rows if row["state"] == "READY"]
        return json_response(rows)

    async def load_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        config = model_control.load_config(name, await _parameters(request))
        await self.server.load_model(name, config)
        return json_response({})

    async def unload_model(self, request: Request) -> Response:
        model_control.check_unload_parameters(await _parameters(request))
        await self.server.unload_model(request.path_params["model"])
        return json_response({})

    async def infer(self, request: Request) -> Response:
        started = time.perf_counter_ns()
        name, version = _model_params(request)
        entry = self.server.model(name, version)
        assert entry.guard is not None
        try:
            body = await read_body(request, self.max_request_bytes)
            body = decode_body(
                body, request.headers.get("content-encoding"), self.max_request_bytes
            )
            header_length = parse_header_length(request.headers.get(HEADER_LENGTH), len(body))
            infer_request, output_format = await self._off_loop_if_large(
                len(body), decode_request, body, header_length, entry.guard, name, version
            )
        except ModelportError as exc:
            self.server.record_rejected(entry, exc, started)
            raise
        response = await self.server.infer(infer_request, entry)
        size = sum(array.nbytes for array in response.outputs.values())
        payload, json_length = await self._off_loop_if_large(
            size, encode_response, response, output_format
        )
        headers = {}
        if json_length is not None:
            headers["Inference-Header-Content-Length"] = str(json_length)
        encoding = choose_encoding(request.headers.get("accept-encoding"))
        if encoding is not None and len(payload) >= MIN_COMPRESSED_BYTES:
            payload = encode_body(payload, encoding)
            headers["Content-Encoding"] = encoding
        media_type = JSON if json_length is None else "application/octet-stream"
        return Response(payload, media_type=media_type, headers=headers)


async def _parameters(request: Request) -> dict[str, Any]:
    body = await read_body(request, MAX_CONTROL_BODY)
    if not body.strip():
        return {}
    parameters = parse_json_object(body).get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    return parameters


def _model_params(request: Request) -> tuple[str | None, str | None]:
    params = request.path_params
    return params.get("model"), params.get("version")
