"""The v2 gRPC service: one method per RPC, each translating and calling InferenceServer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Protocol

from modelport.core.errors import ModelportError
from modelport.core.server import InferenceServer
from modelport.frontends import model_control, triton_config
from modelport.frontends.grpc import codec
from modelport.frontends.grpc.generated import inference_pb2 as pb

log = logging.getLogger("modelport.grpc")

STREAM_IN_FLIGHT = 64
"""Requests of one ModelStreamInfer stream that are running or waiting to be sent back; reading
the stream pauses beyond this, so a client that never reads cannot make the server buffer."""


class CallContext(Protocol):
    def time_remaining(self) -> float | None: ...


class InferenceServicer:
    """Errors are raised as ModelportError; frontends/grpc/rpc.py turns them into status codes.
    Methods the proto declares but this class lacks answer UNIMPLEMENTED."""

    def __init__(self, server: InferenceServer) -> None:
        self.server = server

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: CallContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.server.live())

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: CallContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.server.ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: CallContext
    ) -> pb.ModelReadyResponse:
        found = self.server.manager.find(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=found is not None)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: CallContext
    ) -> pb.ServerMetadataResponse:
        return codec.from_dict(self.server.metadata(), pb.ServerMetadataResponse())

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: CallContext
    ) -> pb.ModelMetadataResponse:
        document = self.server.model_metadata(request.name, request.version or None)
        return codec.from_dict(document, pb.ModelMetadataResponse())

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: CallContext
    ) -> pb.ModelConfigResponse:
        entry = self.server.model(request.name, request.version or None)
        config = codec.from_dict(triton_config.model_config(entry), pb.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: CallContext
    ) -> pb.ModelStatisticsResponse:
        stats = self.server.statistics(request.name or None, request.version or None)
        return codec.from_dict({"model_stats": stats}, pb.ModelStatisticsResponse())

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: CallContext
    ) -> pb.RepositoryIndexResponse:
        rows = await self.server.manager.index()
        if request.ready:
            rows = [row for row in rows if row["state"] == "READY"]
        return codec.from_dict({"models": rows}, pb.RepositoryIndexResponse())

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: CallContext
    ) -> pb.RepositoryModelLoadResponse:
        parameters = codec.parameter_values(request.parameters)
        config = model_control.load_config(request.model_name, parameters)
        await self.server.load_model(request.model_name, config)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: CallContext
    ) -> pb.RepositoryModelUnloadResponse:
        model_control.check_unload_parameters(codec.parameter_values(request.parameters))
        await self.server.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: CallContext
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
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: CallContext
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
