"""The access log: one line per request on the `modelport.access` logger, and request ids.

Every frontend (REST with TF Serving, gRPC, queues) calls `record` once a request is answered,
after asking `wanted()`: with `--no-access-log` (or a logger level above INFO) nothing more is
measured or built. A line has the protocol, method and path (gRPC: the RPC's name and path; a
queue: "consume" and the queue's name), the model and version (the version that served, when
the frontend knows it), the status (HTTP's, gRPC's code, or a queue reply's), the latency, the
request id, the client's address, the API key's name when one was used, and the trace id when the
request was traced. Never a key, a header or a payload.
"""

from __future__ import annotations

import logging
import os
import random
import time

ACCESS_LOGGER = "modelport.access"
ACCESS = logging.getLogger(ACCESS_LOGGER)
MAX_REQUEST_ID = 128
"""Longest `x-request-id` taken from a client; a longer or unprintable one is replaced."""
_VISIBLE = bytes(range(0x21, 0x7F))
_START_NS = time.perf_counter_ns()
_PID = os.getpid()


def wanted() -> bool:
    """Whether access lines are written (the logger is enabled for INFO)."""
    return ACCESS.isEnabledFor(logging.INFO)


def new_request_id() -> str:
    return f"{random.getrandbits(64):016x}"


def accept_request_id(value: bytes | None) -> str:
    """A client's `x-request-id` when it is sane (1-128 visible ASCII characters), else a new
    random one."""
    if value and len(value) <= MAX_REQUEST_ID and not value.translate(None, _VISIBLE):
        return value.decode("ascii")
    return new_request_id()


class AccessRecord(logging.LogRecord):
    """One access line. Built without LogRecord's own __init__ (which looks up the caller's
    file, thread and process names): every attribute a formatter reads is set here."""

    def __init__(
        self,
        protocol: str,
        method: str,
        path: str,
        model: str | None,
        version: str | None,
        status: int,
        latency_ns: int,
        request_id: str,
        client: str,
        key: str | None,
        trace_id: str | None,
    ) -> None:
        now = time.time()
        self.name = ACCESS_LOGGER
        self.msg = ""
        self.args = None
        self.levelname = "INFO"
        self.levelno = logging.INFO
        self.pathname = self.filename = self.module = "access_log"
        self.funcName = "record"
        self.lineno = 0
        self.exc_info = None
        self.exc_text = None
        self.stack_info = None
        self.created = now
        self.msecs = int(now * 1000) % 1000
        self.relativeCreated = (time.perf_counter_ns() - _START_NS) / 1e6
        self.thread = None
        self.threadName = None
        self.processName = None
        self.process = _PID
        self.taskName = None
        self.protocol = protocol
        self.method = method
        self.path = path
        self.model = model
        self.version = version
        self.status = status
        self.latency_ms = round(latency_ns / 1e6, 3)
        self.request_id = request_id
        self.client = client
        self.key = key
        self.trace_id = trace_id
        self.messages: int | None = None
        """Requests a gRPC stream carried (its line is written when the stream ends)."""

    def getMessage(self) -> str:
        """The text line; written only when a handler formats this record."""
        line = (
            f"{self.protocol} {self.method} {self.path} {self.status} {self.latency_ms}ms "
            f"model={self.model or '-'} version={self.version or '-'} client={self.client} "
            f"request_id={self.request_id}"
        )
        if self.key is not None:
            line += f" key={self.key}"
        if self.trace_id is not None:
            line += f" trace_id={self.trace_id}"
        if self.messages is not None:
            line += f" messages={self.messages}"
        return line

    def summary(self) -> str:
        """The JSON line's `message` (its fields carry the rest)."""
        return f"{self.method} {self.path} {self.status}"


def record(
    protocol: str,
    method: str,
    path: str,
    model: str | None,
    version: str | None,
    status: int,
    latency_ns: int,
    request_id: str,
    client: str,
    key: str | None = None,
    trace_id: str | None = None,
    messages: int | None = None,
) -> None:
    line = AccessRecord(
        protocol,
        method,
        path,
        model,
        version,
        status,
        latency_ns,
        request_id,
        client,
        key,
        trace_id,
    )
    line.messages = messages
    ACCESS.handle(line)
