"""v2 REST endpoints (KServe Open Inference Protocol) plus Triton's config and statistics."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.core.data_plane import DataPlane
from modelport.core.errors import ErrorKind, InvalidInput, ModelportError
from modelport.frontends import model_control, triton_config
from modelport.frontends.rest.errors import error_json
from modelport.frontends.rest.infer_route import read_body as read_asgi_body
from modelport.frontends.rest.request_json import parse_json_object

JSON = "application/json"
MAX_CONTROL_BODY = 2 * 1024 * 1024


def json_response(content: object, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type=JSON)


def error_response(message: str, status: int) -> Response:
    return Response(error_json(message), status_code=status, media_type=JSON)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes without buffering it all."""
    declared = request.headers.get("content-length")
    return await read_asgi_body(
        request.receive, None if declared is None else declared.encode(), limit
    )


class V2Endpoints:
    """Everything under /v2 except infer, which `infer_route.InferFastPath` answers in front of
    the routing table."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

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
                Route(f"{prefix}/config", self.model_config, methods=["GET"]),
                Route(f"{prefix}/stats", self.statistics, methods=["GET"]),
            ]
        return routes

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        if self.plane.ready():
            return json_response({"ready": True})
        return json_response({"ready": False, "error": "the server is not ready"}, 400)

    async def metadata(self, request: Request) -> Response:
        return json_response(self.plane.metadata())

    async def model_metadata(self, request: Request) -> Response:
        name, version = _model_path(request)
        return json_response(self.plane.model_metadata(name, version))

    async def model_ready(self, request: Request) -> Response:
        name, version = _model_path(request)
        try:
            self.plane.resolve(name, version)
        except ModelportError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                raise
            return json_response({"name": name, "ready": False, "error": exc.message}, 400)
        return json_response({"name": name, "ready": True})

    async def model_config(self, request: Request) -> Response:
        name, version = _model_path(request)
        return json_response(triton_config.model_config(self.plane.resolve(name, version)))

    async def statistics(self, request: Request) -> Response:
        name, version = _model_params(request)
        return json_response({"model_stats": self.plane.statistics(name, version)})

    async def repository_index(self, request: Request) -> Response:
        body = await read_body(request, 64 * 1024)
        options = parse_json_object(body) if body.strip() else {}
        rows = await self.plane.repository_index(ready_only=options.get("ready") is True)
        return json_response(rows)

    async def load_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        config_text = model_control.load_config(await _parameters(request))
        await self.plane.load_model(name, config_text)
        return json_response({})

    async def unload_model(self, request: Request) -> Response:
        model_control.check_unload_parameters(await _parameters(request))
        await self.plane.unload_model(request.path_params["model"])
        return json_response({})


async def _parameters(request: Request) -> dict[str, Any]:
    body = await read_body(request, MAX_CONTROL_BODY)
    if not body.strip():
        return {}
    parameters = parse_json_object(body).get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    return parameters


def _model_path(request: Request) -> tuple[str, str | None]:
    params = request.path_params
    return params["model"], params.get("version")


def _model_params(request: Request) -> tuple[str | None, str | None]:
    params = request.path_params
    return params.get("model"), params.get("version")
