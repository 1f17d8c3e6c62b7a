"""Composition root: builds the core, runtimes, observability and frontends and wires them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.types import ASGIApp

from modelport.core.data_plane import DataPlane
from modelport.core.manager import ModelManager
from modelport.core.tracing import Tracer
from modelport.core.validate import Limits
from modelport.frontends.budgets import Budgets, ByteBudget
from modelport.frontends.grpc.http2.limits import Http2Limits
from modelport.frontends.grpc.server import GrpcServer
from modelport.frontends.off_loop import OffLoop
from modelport.frontends.queue.service import QueueService
from modelport.frontends.rest import create_app
from modelport.observability.access_metrics import AccessMetrics
from modelport.observability.alert_metrics import AlertMetrics
from modelport.observability.metrics import Metrics
from modelport.observability.queue_metrics import (
    QueueMetricFamilies,
    QueueMetrics,
    queue_metrics,
)
from modelport.observability.transport_metrics import TransportRefusals
from modelport.observability.window import WindowStore
from modelport.operations.alerting import AlertService
from modelport.operations.webhooks import WebhookSender
from modelport.repository import LocalRepository
from modelport.repository.poller import RepositoryPoller
from modelport.repository.publish import shift_traffic
from modelport.runtimes import RuntimeRegistry
from modelport.security.access import AccessControl
from modelport.security.tls import ServerTls
from modelport.settings import ServerSettings

log = logging.getLogger("modelport")


EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "model_repository")


@dataclass(slots=True)
class Application:
    settings: ServerSettings
    plane: DataPlane
    metrics: Metrics
    http: ASGIApp
    queues: QueueService
    budgets: Budgets
    """Connection caps per port and the bytes of requests still arriving, both ports'."""
    refusals: TransportRefusals
    """Counts and logs what the ports' transport limits refuse (`for_port("http")`)."""
    tls: ServerTls | None = None
    """Both ports' TLS contexts (--tls-cert); serving.py reloads them on SIGHUP."""

    def stop_reading(self) -> None:
        """The server is asked to stop: take no more queue requests from now on (those in
        flight are answered during the shutdown that follows)."""
        self.queues.stop_reading()


def build(settings: ServerSettings, grpc_socket: socket.socket | None = None) -> Application:
    """The server; `grpc_socket` is a listening socket shared with sibling workers (serving.py).
    A worker among several loads its models before it takes requests; a lone server takes them
    at once and reports not-ready until the load is done."""
    limits = Limits(
        max_request_bytes=settings.max_request_bytes,
        max_tensor_elements=settings.max_tensor_elements,
    )
    one_of_several = settings.workers > 1  # serving.py runs this in each of N worker processes
    tls_files = settings.tls_files()
    tls = ServerTls(tls_files) if tls_files is not None else None  # TlsError names a bad file
    window = WindowStore()
    metrics = Metrics(multiprocess=one_of_several, window=window)
    budgets = Budgets.create(settings.max_connections, settings.pending_bytes_limit())
    refusals = TransportRefusals(metrics.registry)
    access = AccessControl.from_sources(
        settings.api_keys,
        settings.env_api_key(),
        protect_health=settings.protect_health,
        observer=AccessMetrics(metrics.registry),
    )
    repository = LocalRepository(settings.repository)
    manager = ModelManager(repository, RuntimeRegistry(), metrics, limits)
    plane = DataPlane(
        manager,
        extensions=EXTENSIONS,
        strict_readiness=settings.strict_readiness,
        model_control=settings.model_control_mode,
        startup_models=settings.startup_models(),
        tracer=_tracer(settings),
    )
    alerting = _alert_service(settings, manager, window, AlertMetrics(metrics.registry))
    plane.add_index_notes(alerting.index_notes)
    poller = (
        RepositoryPoller(repository, manager, settings.repository_poll_secs)
        if settings.model_control_mode == "poll"
        else None
    )
    # the families exist only when some queue does: /metrics shows no empty broker series
    families = queue_metrics(metrics) if settings.queue else None
    off_loop = OffLoop()  # worker-thread slots for large bodies and compression, all frontends
    queues = QueueService(
        plane,
        settings.queue_endpoints(),
        lambda label: QueueMetrics(_present(families), label),
        off_loop,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.uses_examples:
            log.info(
                "no --model-repository given: serving the bundled examples from %s",
                settings.repository,
            )
        else:
            log.info("serving the model repository %s", settings.repository)
        grpc_server = GrpcServer(
            plane,
            settings.host,
            settings.grpc_port,
            max_message_bytes=settings.max_request_bytes,
            sock=grpc_socket,
            access=access,
            tls=tls.grpc.listener if tls is not None else None,
            limits=Http2Limits(
                preface_timeout=settings.header_timeout,
                stall_timeout=settings.stall_timeout,
                idle_timeout=settings.idle_timeout,
            ),
            connections=budgets.grpc,
            pending=budgets.pending,
            answers=ByteBudget(settings.pending_bytes_limit()),
            refused=refusals.for_port("grpc"),
            off_loop=off_loop,
        )
        if one_of_several:
            await _load(plane, poller)
        await grpc_server.start()
        log.info(
            "v2 gRPC%s on %s:%d", " over TLS" if tls else "", settings.host, settings.grpc_port
        )
        loading = asyncio.create_task(
            _follow(plane, poller, queues, loaded=one_of_several), name="modelport-start"
        )
        loading.add_done_callback(_report_loaded)
        log.info("%s", access.summary())
        following_keys = asyncio.create_task(access.watch(), name="modelport-keys")
        alerting.start()
        try:
            yield
        finally:
            await alerting.stop()
            following_keys.cancel()
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            with contextlib.suppress(asyncio.CancelledError):
                await following_keys
            await queues.stop()  # finishes and acknowledges the queue requests in flight
            await grpc_server.stop(grace=5)
            await plane.close()
            if plane.tracer is not None:  # sends the spans still buffered
                await asyncio.to_thread(plane.tracer.close)

    http = create_app(
        plane,
        metrics,
        max_request_bytes=settings.max_request_bytes,
        lifespan=lifespan,
        access=access,
        alerts=alerting,
        off_loop=off_loop,
    )
    return Application(settings, plane, metrics, http, queues, budgets, refusals, tls=tls)


def _alert_service(
    settings: ServerSettings, manager: ModelManager, window: WindowStore, observer: AlertMetrics
) -> AlertService:
    """The SLO loop: alerts, their webhooks, and canary rollbacks written to config.yaml."""
    webhooks = (
        WebhookSender(settings.alert_webhook, observer, external_url=settings.external_url())
        if settings.alert_webhook
        else None
    )
    return AlertService(
        manager,
        window,
        observer,
        write_traffic=functools.partial(shift_traffic, settings.repository),
        notifier=webhooks,
        interval=settings.slo_interval,
    )


def _tracer(settings: ServerSettings) -> Tracer | None:
    """OpenTelemetry tracing, when a sample ratio is set; only then is it imported at all."""
    if settings.trace_sample_ratio <= 0:
        if settings.otlp_endpoint is not None:
            log.warning("--otlp-endpoint is set but --trace-sample-ratio is 0: nothing is traced")
        return None
    from modelport.observability.tracing import otlp_tracer

    return otlp_tracer(settings.trace_sample_ratio, settings.otlp_endpoint)


def _present(families: QueueMetricFamilies | None) -> QueueMetricFamilies:
    assert families is not None  # asked for only when a queue is configured
    return families


async def _load(plane: DataPlane, poller: RepositoryPoller | None) -> None:
    if poller is not None:
        await poller.snapshot()
    await plane.start()
    # Everything alive now (modules, models, sessions) lives as long as the server: leave it
    # out of the collector's full passes, which otherwise walk it all and stall the loop for
    # tens of ms (mlp at c=32: p99 33-42 -> see benchmarks/results/ab-2026-12-02-frontdoor.md)
    gc.collect()
    gc.freeze()
    log.info("the initial load has finished; the server is ready")


async def _follow(
    plane: DataPlane, poller: RepositoryPoller | None, queues: QueueService, loaded: bool
) -> None:
    """Load the repository (unless done), start reading the queues (a request read before its
    model loaded would be answered 404), then in poll mode follow the repository until the
    server stops."""
    if not loaded:
        await _load(plane, poller)
    queues.start()
    if poller is not None:
        log.info("polling the model repository every %g s", poller.interval)
        await poller.run()


def _report_loaded(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.critical("loading the model repository failed", exc_info=error)
