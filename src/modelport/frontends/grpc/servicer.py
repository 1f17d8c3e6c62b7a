"""The v2 gRPC service: one method per RPC, each translating and calling InferenceServer."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from modelport.core.errors import ModelportError
from modelport.core.server import InferenceServer
from modelport.frontends import model_control, triton_config
from modelport.frontends.grpc import codec
from modelport.frontends.grpc.generated import inference_pb2 as pb
from modelport.frontends.grpc.generated import inference_pb2_grpc as pb_grpc
from modelport.frontends.status import grpc_code_name

log = logging.getLogger("modelport.grpc")

STREAM_IN_FLIGHT = 64
"""Requests of one ModelStreamInfer stream that are running or waiting to be sent back; reading
the stream pauses beyond this, so a client that never reads cannot make the server buffer."""

Reply = TypeVar("Reply")
Handler = Callable[..., Awaitable[Reply]]


def _translate_errors(method: Handler[Reply]) -> Handler[Reply]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Reply:
        try:
            return await method(self, request, context)
        except ModelportError as exc:
            await context.abort(grpc.StatusCode[grpc_code_name(exc.kind)], exc.message)
            raise  # abort raises; this line only satisfies the type checker
        except Exception as exc:
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")
            raise

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, server: InferenceServer) -> None:
        self.server = server

    @_translate_errors
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Any
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.server.live())

    @_translate_errors
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Any
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.server.ready())

    @_translate_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        found = self.server.manager.find(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=found is not None)

    @_translate_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return codec.from_dict(self.server.metadata(), pb.ServerMetadataResponse())

    @_translate_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        document = self.server.model_metadata(request.name, request.version or None)
        return codec.from_dict(document, pb.ModelMetadataResponse())

    @_translate_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Any
    ) -> pb.ModelConfigResponse:
        entry = self.server.model(request.name, request.version or None)
        config = codec.from_dict(triton_config.model_config(entry), pb.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    @_translate_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        stats = self.server.statistics(request.name or None, request.version or None)
        return codec.from_dict({"model_stats": stats}, pb.ModelStatisticsResponse())

    @_translate_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        rows = await self.server.manager.index()
        if request.ready:
            rows = [row for row in rows if row["state"] == "READY"]
        return codec.from_dict({"models": rows}, pb.RepositoryIndexResponse())

    @_translate_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        parameters = codec.parameter_values(request.parameters)
        config = model_control.load_config(request.model_name, parameters)
        await self.server.load_model(request.model_name, config)
        return pb.RepositoryModelLoadResponse()

    @_translate_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        model_control.check_unload_parameters(codec.parameter_values(request.parameters))
        await self.server.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @_translate_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse:
        return await self._infer(request, context.time_remaining())

    async def _infer(
        self, request: pb.ModelInferRequest, deadline: float | None = None
    ) -> pb.ModelInferResponse:
        started = time.perf_counter_ns()
        version = request.model_version or None
        entry = self.server.model(request.model_name, version)
        assert entry.guard is not None
        try:
            infer_request = codec.decode_request(request, entry.guard, request.model_name, version)
            if deadline is not None:
                infer_request.timeout = min(deadline, infer_request.timeout or deadline)
        except ModelportError as exc:
            self.server.record_rejected(entry, exc, started)
            raise
        response = await self.server.infer(infer_request, entry)
        return codec.encode_response(response)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests of one stream run concurrently; responses come back as they finish (match
        them by id). An error answers that request with error_message and the stream goes on."""
        results: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)

        async def run_one(request: pb.ModelInferRequest) -> None:
            try:
                reply = pb.ModelStreamInferResponse(infer_response=await self._infer(request))
            except ModelportError as exc:
                reply = pb.ModelStreamInferResponse(
                    error_message=exc.message,
                    infer_response=pb.ModelInferResponse(
                        model_name=request.model_name, id=request.id
                    ),
                )
            except Exception as exc:
                log.exception("unexpected error in ModelStreamInfer")
                reply = pb.ModelStreamInferResponse(
                    error_message=f"internal error: {type(exc).__name__}",
                    infer_response=pb.ModelInferResponse(
                        model_name=request.model_name, id=request.id
                    ),
                )
            await results.put(reply)  # its slot is released once the reply has been sent

        async def read_all() -> None:
            tasks = set()
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    task = asyncio.create_task(run_one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
            finally:
                await results.put(None)

        reader = asyncio.create_task(read_all())
        try:
            while (reply := await results.get()) is not None:
                yield reply
                slots.release()
        finally:
            reader.cancel()
