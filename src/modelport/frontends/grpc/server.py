"""The v2 gRPC server: our HTTP/2 connections on the same event loop as the HTTP server."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import replace

from modelport.core.data_plane import DataPlane
from modelport.frontends.budgets import ByteBudget, ConnectionCap
from modelport.frontends.grpc.access import GrpcGuard
from modelport.frontends.grpc.generated import inference_pb2 as pb
from modelport.frontends.grpc.http2.connection import Connection, Shared
from modelport.frontends.grpc.http2.limits import Http2Limits
from modelport.frontends.grpc.rpc import Dispatcher, service_methods
from modelport.frontends.grpc.servicer import InferenceServicer
from modelport.frontends.off_loop import OffLoop
from modelport.security.access import AccessControl

log = logging.getLogger("modelport.grpc")

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


class GrpcServer:
    def __init__(
        self,
        plane: DataPlane,
        host: str,
        port: int,
        *,
        max_message_bytes: int,
        sock: socket.socket | None = None,
        access: AccessControl | None = None,
        tls: ssl.SSLContext | None = None,
        limits: Http2Limits | None = None,
        connections: ConnectionCap | None = None,
        pending: ByteBudget | None = None,
        answers: ByteBudget | None = None,
        refused: Callable[[str], None] | None = None,
        off_loop: OffLoop | None = None,
    ) -> None:
        """`sock`: an already listening socket (shared by several workers) instead of binding;
        `access`: API keys, checked on each call (None: no checks); `tls`: serve TLS with this
        context (which offers ALPN h2); `limits`: HTTP/2's (its max_connection_bytes is set
        from max_message_bytes); `connections`: this port's cap; `pending`: bytes of requests
        still arriving, server-wide (shared with the HTTP port); `answers`: bytes of answers
        waiting for clients' windows, server-wide; `refused(limit)`: hears of each client a
        limit refused or cut off; `off_loop`: where large compressed messages are inflated."""
        methods = service_methods(InferenceServicer(plane), SERVICE)
        guard = None if access is None else GrpcGuard(access, SERVICE)
        limits = limits or Http2Limits()
        self._dispatcher = Dispatcher(
            methods,
            max_message_bytes,
            guard=guard,
            tracer=plane.tracer,
            pending=pending,
            stall_timeout=limits.stall_timeout,
            off_loop=off_loop,
        )
        self._limits = replace(limits, max_connection_bytes=self._dispatcher.max_connection_bytes)
        self._shared = Shared(self._limits, connections, answers, refused)
        self._host = host
        self._port = port
        self._sock = sock
        self._tls = tls
        self._listener: asyncio.Server | None = None
        self._connections: set[Connection] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # a client gets as long to finish its TLS handshake as to send the HTTP/2 preface
        handshake = self._limits.preface_timeout if self._tls is not None else None
        if self._sock is not None:
            self._listener = await loop.create_server(
                self._connect, sock=self._sock, ssl=self._tls, ssl_handshake_timeout=handshake
            )
            return
        try:
            self._listener = await loop.create_server(
                self._connect,
                self._host,
                self._port,
                reuse_address=True,
                ssl=self._tls,
                ssl_handshake_timeout=handshake,
            )
        except OSError as exc:
            where = f"{self._host}:{self._port}"
            raise OSError(f"could not bind the gRPC port {where}: {exc}") from None

    def _connect(self) -> Connection:
        # counted from connection_made on: over TLS a failed handshake never gets that far
        # and would otherwise stay in the set for good
        connections = self._connections
        return Connection(
            self._dispatcher,
            self._limits,
            connections.discard,
            on_opened=connections.add,
            shared=self._shared,
        )

    async def stop(self, grace: float) -> None:
        """Stop listening, let open calls finish for up to `grace` seconds, then cut the rest."""
        if self._listener is None:
            return
        self._listener.close()
        for connection in list(self._connections):
            connection.shutdown()
        deadline = asyncio.get_running_loop().time() + grace
        while self._connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self._connections):
            connection.abort()
        await self._listener.wait_closed()
