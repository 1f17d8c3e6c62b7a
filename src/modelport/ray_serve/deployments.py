"""The Serve deployments: a model's replicas, the front, and the metrics hub.

Every replica builds a complete modelport server with `modelport.app.build` (the same core,
batcher, runtimes, codecs, error table, metrics and API key checks as `modelport serve`) and
serves its ASGI app through Ray's HTTP proxy. Ray runs the app's lifespan when the replica
starts; `LoadedFirst` makes that wait for the models, so Serve routes to a replica only once it
can answer. A replica opens no TCP port of its own: its gRPC server, which the lifespan starts
like every modelport server's, listens on a Unix socket in a private directory, unused
(the README's "Running on Ray Serve" says why gRPC does not go through Ray).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from ray import serve
from ray.serve import Deployment
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp

from modelport.app import Application, build
from modelport.frontends.rest.access_guard import AccessGuard
from modelport.ray_serve.asgi_bridge import (
    ForwardedRequest,
    ForwardedResponse,
    LoadedFirst,
    at_full_path,
    call_app,
    only_under,
)
from modelport.ray_serve.front import Front
from modelport.ray_serve.metrics_merge import ReplicaKey, ReplicaMetrics
from modelport.ray_serve.options import (
    DEFAULT_MAX_ONGOING_REQUESTS,
    front_settings,
    replica_settings,
)
from modelport.ray_serve.plan import FRONT_APP, model_route
from modelport.security.access import AccessControl

log = logging.getLogger("modelport.ray_serve")

MODEL_DEPLOYMENT = "model"
FRONT_DEPLOYMENT = "front"
HUB_DEPLOYMENT = "metrics"
RAY_LOGGING = {"enable_access_log": False}
"""modelport writes its own access log (--access-log); Ray's would log every request twice."""


class _PrivateSocket:
    """A listening Unix socket that no one connects to: what the replica's gRPC server gets, so
    it opens no port. On Linux it lives in the abstract namespace (no file, nothing left behind
    by a replica that is killed); elsewhere in a fresh directory, removed when the replica stops.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.directory: Path | None = None
        if sys.platform == "linux":
            self.sock.bind(f"\0modelport-grpc-{uuid.uuid4().hex}")
        else:
            self.directory = Path(tempfile.mkdtemp(prefix="mp-grpc-"))
            self.sock.bind(str(self.directory / "g"))
        self.sock.listen(8)

    def close(self) -> None:
        self.sock.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


class MetricsReporter:
    """Sends this replica's metric families to the hub every `interval` seconds."""

    def __init__(self, registry: CollectorRegistry, interval: float) -> None:
        self._registry = registry
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._key: ReplicaKey | None = None
        self._hub: DeploymentHandle[Any] | None = None

    async def start(self) -> None:
        context = serve.get_replica_context()
        self._key = ReplicaKey(context.app_name, context.replica_id.unique_id)
        self._task = asyncio.create_task(self._run(), name="modelport-metrics-report")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._hub is not None and self._key is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._hub.forget.remote(self._key), self._interval)

    async def _run(self) -> None:
        while True:
            try:
                if self._hub is None:
                    self._hub = serve.get_deployment_handle(HUB_DEPLOYMENT, app_name=FRONT_APP)
                families: list[Metric] = list(self._registry.collect())
                await asyncio.wait_for(self._hub.report.remote(self._key, families), self._interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the front is not deployed (yet): try again later
                log.debug("metrics not reported: %r", exc)
            await asyncio.sleep(self._interval)


class ModelReplica:
    """One model's replicas. HTTP under `/v2/models/NAME` arrives from Ray's proxy; the front
    calls the other methods through a handle."""

    def __init__(
        self, settings: dict[str, Any], model: str, load: list[str], metrics_interval: float
    ) -> None:
        self._socket = _PrivateSocket()
        self._modelport: Application = build(
            replica_settings(settings, tuple(load)), grpc_socket=self._socket.sock
        )
        self._model = model
        self._reporter = MetricsReporter(self._modelport.metrics.registry, metrics_interval)
        plane = self._modelport.plane
        self._asgi = LoadedFirst(
            only_under(at_full_path(self._modelport.http), (model_route(model),)),
            self._modelport.http,
            loaded=plane.ready,
            also=self._reporter.start,
            stop_also=self._stop,
        )

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return self._asgi

    async def _stop(self) -> None:
        await self._reporter.stop()
        self._socket.close()

    async def forward(self, request: ForwardedRequest) -> ForwardedResponse:
        return await call_app(self._modelport.http, request)

    async def ready(self, strict: bool) -> bool:
        plane = self._modelport.plane
        return plane.ready() and (not strict or plane.is_ready(self._model))

    async def index_rows(self, ready_only: bool) -> list[dict[str, Any]]:
        rows = await self._modelport.plane.repository_index(ready_only=ready_only)
        return [dict(row) for row in rows if row["name"] == self._model]

    async def statistics(self) -> list[dict[str, Any]]:
        stats = self._modelport.plane.statistics()
        return [dict(s) for s in stats if s["name"] == self._model]


class HandleLink:
    """A model's deployment as the front reaches it: a Serve handle, made on first use (the
    model's application may be deployed after the front)."""

    def __init__(self, model: str) -> None:
        self._model = model
        self._handle: DeploymentHandle[Any] | None = None

    def _get(self) -> DeploymentHandle[Any]:
        if self._handle is None:
            self._handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=self._model)
        return self._handle

    async def forward(self, request: ForwardedRequest) -> ForwardedResponse:
        response: ForwardedResponse = await self._get().forward.remote(request)
        return response

    async def ready(self, strict: bool) -> bool:
        answer: bool = await self._get().ready.remote(strict)
        return answer

    async def index_rows(self, ready_only: bool) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self._get().index_rows.remote(ready_only)
        return rows

    async def statistics(self) -> list[dict[str, Any]]:
        stats: list[dict[str, Any]] = await self._get().statistics.remote()
        return stats


class MetricsHub:
    """Holds the latest metrics of every replica (one hub replica, so one view of them)."""

    def __init__(self, metrics_interval: float) -> None:
        self._replicas = ReplicaMetrics(stale_after=3 * metrics_interval + 1)

    def report(self, key: ReplicaKey, families: list[Metric]) -> None:
        self._replicas.report(key, families)

    def forget(self, key: ReplicaKey) -> None:
        self._replicas.forget(key)

    def exposition(self) -> bytes:
        return self._replicas.exposition()


class FrontReplica:
    """The front application's ingress: the routes of front.py behind the API key check."""

    def __init__(
        self,
        settings: dict[str, Any],
        models: list[str],
        hub: DeploymentHandle[Any],
        metrics_interval: float,
    ) -> None:
        own = front_settings(settings)
        self._socket = _PrivateSocket()
        self._modelport = build(own, grpc_socket=self._socket.sock)
        self._hub = hub
        self._access = AccessControl.from_sources(
            own.api_keys, own.env_api_key(), protect_health=own.protect_health
        )
        self._watching: asyncio.Task[None] | None = None
        self._reporter = MetricsReporter(self._modelport.metrics.registry, metrics_interval)
        front = Front(
            {name: HandleLink(name) for name in models},
            self._modelport.http,
            self._exposition,
            max_request_bytes=own.max_request_bytes,
            strict_readiness=bool(settings.get("strict_readiness", False)),
        )
        self._asgi = LoadedFirst(
            at_full_path(AccessGuard(front, self._access)),
            self._modelport.http,
            loaded=self._modelport.plane.ready,
            also=self._start,
            stop_also=self._stop,
        )

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return self._asgi

    async def _exposition(self) -> bytes:
        body: bytes = await self._hub.exposition.remote()
        return body

    async def _start(self) -> None:
        self._watching = asyncio.create_task(self._access.watch(), name="modelport-front-keys")
        await self._reporter.start()

    async def _stop(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
        await self._reporter.stop()
        self._socket.close()


# The deployments, made the functional way: a class decorator's result is not a type mypy sees.
MODEL: Deployment = serve.deployment(
    name=MODEL_DEPLOYMENT,
    max_ongoing_requests=DEFAULT_MAX_ONGOING_REQUESTS,
    logging_config=RAY_LOGGING,
)(serve.ingress()(ModelReplica))
METRICS_HUB: Deployment = serve.deployment(
    name=HUB_DEPLOYMENT,
    num_replicas=1,
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0},
)(MetricsHub)
FRONT: Deployment = serve.deployment(
    name=FRONT_DEPLOYMENT,
    max_ongoing_requests=DEFAULT_MAX_ONGOING_REQUESTS,
    logging_config=RAY_LOGGING,
    ray_actor_options={"num_cpus": 0},  # it passes requests on; the models' replicas compute
)(serve.ingress()(FrontReplica))
