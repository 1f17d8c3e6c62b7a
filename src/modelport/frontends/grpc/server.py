"""The grpc.aio server that hosts the v2 service next to the HTTP server, on the same event loop."""

from __future__ import annotations

import grpc

from modelport.core.server import InferenceServer
from modelport.frontends.grpc.generated import inference_pb2_grpc as pb_grpc
from modelport.frontends.grpc.servicer import InferenceServicer


def create_server(
    server: InferenceServer, host: str, port: int, *, max_message_bytes: int
) -> grpc.aio.Server:
    grpc_server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(server), grpc_server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = grpc_server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"could not bind the gRPC port {address}: {exc}") from None
    if bound == 0:
        raise OSError(f"could not bind the gRPC port {address}")
    return grpc_server
