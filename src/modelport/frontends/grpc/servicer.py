"""The v2 gRPC service: one method per RPC, each translating and calling the DataPlane."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from modelport.core.data_plane import DataPlane
from modelport.core.errors import ModelportError, public_error
from modelport.core.validate import InputGuard, ValidatedRequest
from modelport.frontends import model_control, triton_config
from modelport.frontends.grpc import codec
from modelport.frontends.grpc.generated import inference_pb2 as pb

log = logging.getLogger("modelport.grpc")

STREAM_IN_FLIGHT = 64
"""Requests of one ModelStreamInfer stream that are running or waiting to be sent back; reading
the stream pauses beyond this, so a client that never reads cannot make the server buffer."""


class CallContext(Protocol):
    def time_remaining(self) -> float | None: ...

    def admit(self, model: str) -> None:
        """Raises if the call's API key may not send a streamed request for `model`."""


class InferenceServicer:
    """Errors are raised as ModelportError; frontends/grpc/rpc.py turns them into status codes.
    Methods the proto declares but this class lacks answer UNIMPLEMENTED."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: CallContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.plane.live())

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: CallContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: CallContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(
            ready=self.plane.is_ready(request.name, request.version or None)
        )

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: CallContext
    ) -> pb.ServerMetadataResponse:
        return codec.from_dict(self.plane.metadata(), pb.ServerMetadataResponse())

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: CallContext
    ) -> pb.ModelMetadataResponse:
        document = self.plane.model_metadata(request.name, request.version or None)
        return codec.from_dict(document, pb.ModelMetadataResponse())

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: CallContext
    ) -> pb.ModelConfigResponse:
        handle = self.plane.resolve(request.name, request.version or None)
        config = codec.from_dict(triton_config.model_config(handle), pb.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: CallContext
    ) -> pb.ModelStatisticsResponse:
        stats = self.plane.statistics(request.name or None, request.version or None)
        return codec.from_dict({"model_stats": stats}, pb.ModelStatisticsResponse())

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: CallContext
    ) -> pb.RepositoryIndexResponse:
        rows = await self.plane.repository_index(ready_only=request.ready)
        return codec.from_dict({"models": rows}, pb.RepositoryIndexResponse())

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: CallContext
    ) -> pb.RepositoryModelLoadResponse:
        parameters = codec.parameter_values(request.parameters)
        config_text = model_control.load_config(parameters)
        await self.plane.load_model(request.model_name, config_text)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: CallContext
    ) -> pb.RepositoryModelUnloadResponse:
        model_control.check_unload_parameters(codec.parameter_values(request.parameters))
        await self.plane.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: CallContext
    ) -> pb.ModelInferResponse:
        return await self._infer(request, context.time_remaining())

    async def _infer(
        self, request: pb.ModelInferRequest, deadline: float | None = None
    ) -> pb.ModelInferResponse:
        name, version = request.model_name, request.model_version or None

        def decode(guard: InputGuard) -> ValidatedRequest:
            return codec.decode_request(request, guard, name, version, deadline)

        response = await self.plane.infer(self.plane.resolve(name, version), decode)
        return codec.encode_response(response)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: CallContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests of one stream run concurrently; responses come back as they finish (match
        them by id). An error answers that request with error_message and the stream goes on."""
        results: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)

        async def run_one(request: pb.ModelInferRequest) -> None:
            try:
                context.admit(request.model_name)
                reply = pb.ModelStreamInferResponse(infer_response=await self._infer(request))
            except Exception as exc:
                if not isinstance(exc, ModelportError):
                    log.exception("unexpected error in ModelStreamInfer")
                reply = pb.ModelStreamInferResponse(
                    error_message=public_error(exc).message,
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
