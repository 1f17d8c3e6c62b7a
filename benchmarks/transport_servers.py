"""The three servers benchmarks/transport_floor.py measures, each answering ModelInfer with one
canned reply (a ModelInferResponse built once), so that only the transport does work:

- `ours`: modelport's HTTP/2 Connection and its gRPC Dispatcher, on uvloop;
- `h2`: the same Dispatcher behind benchmarks/h2_seam.py (the h2 library's HTTP/2), on uvloop;
- `grpc-aio`: grpcio's asyncio server with a generic unary handler (on asyncio's own loop, the
  one grpc.aio supports).

All three parse the request message and serialize the reply, as a real handler's transport would.

    python benchmarks/transport_servers.py KIND PORT COUNT_FILE

serves 127.0.0.1:PORT until SIGTERM, then writes the number of calls its handler answered to
COUNT_FILE (the driver checks it against what the load generator counted).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
SERVICE = "inference.GRPCInferenceService"
METHOD = "ModelInfer"
PATH = f"/{SERVICE}/{METHOD}"
KINDS = ("ours", "h2", "grpc-aio")


def canned_messages() -> tuple[Any, Any]:
    """The request every call sends (the mlp's one row of 64 FP32) and the reply (10 FP32)."""
    from modelport.frontends.grpc.generated import inference_pb2 as pb

    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="input", datatype="FP32")
    tensor.shape.extend([1, 64])
    request.raw_input_contents.append(bytes(range(256)))
    reply = pb.ModelInferResponse(model_name="mlp", model_version="1", id="canned")
    output = reply.outputs.add(name="output", datatype="FP32")
    output.shape.extend([1, 10])
    reply.raw_output_contents.append(bytes(range(40)))
    return request, reply


class Counter:
    calls = 0


async def _until_terminated() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


async def serve_http2(kind: str, port: int) -> None:
    from h2_seam import H2Seam

    from modelport.frontends.grpc.generated import inference_pb2 as pb
    from modelport.frontends.grpc.http2.connection import Connection
    from modelport.frontends.grpc.http2.limits import Http2Limits
    from modelport.frontends.grpc.rpc import Dispatcher, Method

    _, reply = canned_messages()

    async def infer(request: Any, call: Any) -> Any:
        Counter.calls += 1
        return reply

    dispatcher = Dispatcher({PATH.encode(): Method(pb.ModelInferRequest, False, infer)}, 64 << 20)
    limits = Http2Limits()
    if kind == "ours":
        factory: Any = lambda: Connection(dispatcher, limits)  # noqa: E731
    else:
        factory = lambda: H2Seam(dispatcher)  # noqa: E731
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, HOST, port, reuse_address=True)
    await _until_terminated()
    server.close()


async def serve_grpc_aio(port: int) -> None:
    import grpc

    from modelport.frontends.grpc.generated import inference_pb2 as pb

    _, reply = canned_messages()

    async def infer(request: Any, context: Any) -> Any:
        Counter.calls += 1
        return reply

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            METHOD: grpc.unary_unary_rpc_method_handler(
                infer,
                request_deserializer=pb.ModelInferRequest.FromString,
                response_serializer=pb.ModelInferResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"{HOST}:{port}")
    await server.start()
    await _until_terminated()
    await server.stop(grace=None)


def main() -> None:
    kind, port, count_file = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    if kind not in KINDS:
        raise SystemExit(f"unknown server {kind!r}: one of {', '.join(KINDS)}")
    if kind == "grpc-aio":
        asyncio.run(serve_grpc_aio(port))
    else:
        import uvloop

        uvloop.run(serve_http2(kind, port))
    count_file.write_text(str(Counter.calls))


if __name__ == "__main__":
    main()
