"""Running `modelport serve`: one server process, or `--workers N` of them behind a supervisor.

With N workers the supervisor binds the HTTP and gRPC sockets once and starts N spawned worker
processes that all accept on them (as `uvicorn --workers` does); each worker is a complete server
with its own copy of every model, so nothing is shared on the data plane. A worker starts
accepting only once its models are loaded, so no request reaches a worker that is still loading.
Prometheus metrics are summed over the workers (prometheus_client's multiprocess mode); Triton's
statistics and the repository index answer for the worker that took the request. A worker that
dies is replaced; workers stop when the supervisor does, or when it is killed outright.
With TLS, SIGHUP reloads the certificates (the supervisor passes it on to each worker).
benchmarks/results/workers-*.md measures when more workers pay (overhead-bound models).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from types import FrameType
from typing import Any

from modelport.security.tls import ServerTls
from modelport.settings import ServerSettings

log = logging.getLogger("modelport")

METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
RESTARTS_ALLOWED = 5
RESTART_WINDOW_SECS = 60.0
STOP_TIMEOUT_SECS = 20.0
CHECK_SECS = 0.5


def serve(settings: ServerSettings) -> int:
    """Serve until stopped; returns the exit status."""
    if settings.workers == 1:
        run_server(settings)
        return 0
    return Supervisor(settings).run()


def run_server(
    settings: ServerSettings,
    http_socket: socket.socket | None = None,
    grpc_socket: socket.socket | None = None,
) -> None:
    """One server process: models, HTTP (uvicorn) and gRPC on one event loop."""
    import uvicorn

    from modelport.app import build
    from modelport.frontends.rest.http1 import Http1Limits, protocol_class

    application = build(settings, grpc_socket=grpc_socket)
    tls = application.tls
    http_protocol = protocol_class(
        Http1Limits(
            header_timeout=settings.header_timeout,
            stall_timeout=settings.stall_timeout,
            connections=application.budgets.http,
            pending=application.budgets.pending,
            on_refused=application.refusals.for_port("http"),
        )
    )
    config = uvicorn.Config(
        application.http,
        host=settings.host,
        port=settings.http_port,
        loop="uvloop",
        http=http_protocol,  # httptools with our limits (frontends/rest/http1.py)
        access_log=False,
        log_config=None,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
        # our context, not one uvicorn builds from file names: its certificates are reloaded
        ssl_context_factory=(lambda *_: tls.http.listener) if tls is not None else None,
    )
    if tls is not None:
        log.info("TLS on both ports: %s", tls.describe())
        reload_on_sighup(tls)

    class StoppingServer(uvicorn.Server):
        """Stops taking queue requests when the signal comes, not after the HTTP drain."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            application.stop_reading()
            super().handle_exit(sig, frame)

    StoppingServer(config).run(sockets=[http_socket] if http_socket is not None else None)


def reload_on_sighup(tls: ServerTls) -> None:
    """SIGHUP reads the certificate files again for new handshakes (a Python handler: it runs
    on the main thread, which is the event loop's, between two steps of its work)."""
    signal.signal(signal.SIGHUP, lambda *_: tls.reload())


def bind(host: str, port: int, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"could not bind the {what} port {host}:{port}: {exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, settings: ServerSettings) -> None:
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")  # never fork a process with threads
        self._workers: list[Any] = []
        self._restarts: deque[float] = deque()
        self._stopping = threading.Event()
        self._tls_files = settings.tls_files()

    def run(self) -> int:
        settings = self._settings
        if self._tls_files is not None:
            ServerTls(self._tls_files)  # a bad file is reported once, before any worker starts
            signal.signal(signal.SIGHUP, lambda *_: self._signal_workers(signal.SIGHUP))
        http = bind(settings.host, settings.http_port, "HTTP")
        grpc = bind(settings.host, settings.grpc_port, "gRPC")
        metrics_dir = tempfile.mkdtemp(prefix="modelport-metrics-")
        os.environ[METRICS_DIR_VARIABLE] = metrics_dir  # the workers inherit it
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self._stopping.set())
        try:
            self._workers = [self._start(index, http, grpc) for index in range(settings.workers)]
            log.info(
                "%d workers serving HTTP on %s:%d and gRPC on %s:%d",
                settings.workers,
                settings.host,
                settings.http_port,
                settings.host,
                settings.grpc_port,
            )
            status = self._watch(http, grpc, metrics_dir)
        finally:
            self._stop_all()
            http.close()
            grpc.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return status

    def _start(self, index: int, http: socket.socket, grpc: socket.socket) -> Any:
        process = self._context.Process(
            target=_worker_main,
            args=(self._settings, http, grpc, os.getpid()),
            name=f"modelport-worker-{index}",
        )
        if self._tls_files is None:
            process.start()
            return process
        # The worker inherits SIGHUP ignored until it has read its certificates and taken the
        # signal itself: one that came earlier would otherwise end it (the default action).
        forwarding = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            process.start()
        finally:
            signal.signal(signal.SIGHUP, forwarding)
        return process

    def _signal_workers(self, signum: int) -> None:
        for process in self._workers:
            if process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    def _watch(self, http: socket.socket, grpc: socket.socket, metrics_dir: str) -> int:
        from prometheus_client import multiprocess

        while not self._stopping.wait(CHECK_SECS):
            for index, process in enumerate(self._workers):
                if process.is_alive():
                    continue
                # prometheus_client leaves mark_process_dead unannotated
                multiprocess.mark_process_dead(process.pid, metrics_dir)  # type: ignore[no-untyped-call]
                now = time.monotonic()
                self._restarts.append(now)
                while self._restarts and now - self._restarts[0] > RESTART_WINDOW_SECS:
                    self._restarts.popleft()
                if len(self._restarts) > RESTARTS_ALLOWED:
                    log.critical(
                        "workers died %d times within %g s; stopping",
                        len(self._restarts),
                        RESTART_WINDOW_SECS,
                    )
                    return 1
                log.error(
                    "worker %d (pid %s) exited with %s; starting another",
                    index,
                    process.pid,
                    process.exitcode,
                )
                self._workers[index] = self._start(index, http, grpc)
        return 0

    def _stop_all(self) -> None:
        for process in self._workers:
            if process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECS
        for process in self._workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker pid %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join()


def _worker_main(
    settings: ServerSettings, http: socket.socket, grpc: socket.socket, supervisor: int
) -> None:
    from modelport.observability.logging import configure

    configure(
        settings.log_level,
        with_pid=True,
        log_format=settings.log_format,
        access_log=settings.access_log,
    )
    threading.Thread(target=_stop_with_supervisor, args=(supervisor,), daemon=True).start()
    run_server(settings, http, grpc)


def _stop_with_supervisor(supervisor: int) -> None:
    """A supervisor killed outright cannot stop its workers: they notice and stop gracefully."""
    while os.getppid() == supervisor:
        time.sleep(CHECK_SECS)
    os.kill(os.getpid(), signal.SIGTERM)
