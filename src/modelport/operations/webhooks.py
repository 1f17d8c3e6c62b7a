"""Alert webhooks (`--alert-webhook URL`): firing and resolved alerts POSTed in Alertmanager's
webhook format (version 4), so receivers written for Alertmanager work unchanged.

Each URL has its own bounded queue and its own background task, so a receiver that is down
delays only its own notifications and never a request: `send` only appends. A full queue drops
its oldest notification (counted). A notification is retried with exponential backoff on a
connection error, a timeout, 408, 429 or a 5xx, in order, so a receiver gets an alert's firing
before its resolved. URLs can hold tokens: logs name the host only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from modelport.core.alerts import Alert, AlertObserver, rfc3339

log = logging.getLogger("modelport.alerts")

RECEIVER = "modelport"
ZERO_TIME = "0001-01-01T00:00:00Z"
"""Alertmanager's endsAt of an alert that has not ended."""
QUEUE_SIZE = 256
ATTEMPTS = 10
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
TIMEOUT = 5.0
STOP_GRACE = 2.0
_RETRIED_STATUS = frozenset({408, 429})

Sleep = Callable[[float], Awaitable[None]]


def webhook_host(url: str) -> str:
    """What logs may say of a webhook URL: its host and port, never a path, query or password."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


def fingerprint(labels: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(labels):
        digest.update(f"{name}\xff{labels[name]}\xff".encode())
    return digest.hexdigest()[:16]


def alertmanager_payload(alert: Alert, external_url: str) -> dict[str, Any]:
    """One alert as an Alertmanager webhook notification: a group of one, grouped by all its
    labels."""
    labels = alert.labels
    annotations = {"summary": alert.summary, "description": alert.description or alert.summary}
    status = "firing" if alert.state == "firing" else "resolved"
    group = ", ".join(f'{name}="{labels[name]}"' for name in sorted(labels))
    return {
        "version": "4",
        "groupKey": f"{{}}:{{{group}}}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": RECEIVER,
        "groupLabels": dict(labels),
        "commonLabels": dict(labels),
        "commonAnnotations": dict(annotations),
        "externalURL": external_url,
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": annotations,
                "startsAt": rfc3339(alert.since),
                "endsAt": ZERO_TIME if alert.ended is None else rfc3339(alert.ended),
                "generatorURL": f"{external_url}/v2/alerts",
                "fingerprint": fingerprint(labels),
            }
        ],
    }


@dataclass(slots=True)
class _Target:
    url: str
    host: str
    queue: deque[bytes]
    waiting: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class WebhookSender:
    """Implements operations.alerting.Notifier."""

    def __init__(
        self,
        urls: Sequence[str],
        observer: AlertObserver,
        *,
        external_url: str,
        queue_size: int = QUEUE_SIZE,
        attempts: int = ATTEMPTS,
        first_backoff: float = FIRST_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        timeout: float = TIMEOUT,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._observer = observer
        self._external_url = external_url.rstrip("/")
        self._queue_size = queue_size
        self._attempts = attempts
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._timeout = timeout
        self._sleep = sleep
        self._targets = [_Target(url, webhook_host(url), deque()) for url in urls]
        self._client: httpx.AsyncClient | None = None

    def send(self, alert: Alert) -> None:
        body = orjson.dumps(alertmanager_payload(alert, self._external_url))
        for target in self._targets:
            if len(target.queue) >= self._queue_size:
                target.queue.popleft()
                self._observer.notification("dropped")
                log.warning("alert webhook %s: queue full, dropped its oldest alert", target.host)
            target.queue.append(body)
            target.waiting.set()

    def start(self) -> None:
        if not self._targets:
            return
        self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
        for target in self._targets:
            target.task = asyncio.create_task(self._deliver_all(target), name="modelport-webhook")
        log.info(
            "sending alerts to %d webhook(s): %s",
            len(self._targets),
            ", ".join(target.host for target in self._targets),
        )

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Give queued notifications up to `grace` seconds to go out, then stop."""
        tasks = [target.task for target in self._targets if target.task is not None]
        if tasks:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            while any(target.queue for target in self._targets) and loop.time() < deadline:
                await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _deliver_all(self, target: _Target) -> None:
        while True:
            while not target.queue:
                target.waiting.clear()
                await target.waiting.wait()
            body = target.queue[0]
            await self._deliver(target, body)
            if target.queue and target.queue[0] is body:  # else the queue overflowed past it
                target.queue.popleft()

    async def _deliver(self, target: _Target, body: bytes) -> None:
        assert self._client is not None
        problem = ""
        for attempt in range(1, self._attempts + 1):
            try:
                reply = await self._client.post(
                    target.url, content=body, headers={"content-type": "application/json"}
                )
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            else:
                if reply.status_code < 300:
                    self._observer.notification("delivered")
                    return
                problem = f"HTTP {reply.status_code}"
                if reply.status_code < 500 and reply.status_code not in _RETRIED_STATUS:
                    break  # the receiver refuses this notification: sending it again won't help
            if attempt < self._attempts:
                delay = min(self._max_backoff, self._first_backoff * 2 ** (attempt - 1))
                log.info(
                    "alert webhook %s: attempt %d failed (%s), retrying in %g s",
                    target.host,
                    attempt,
                    problem,
                    delay,
                )
                await self._sleep(delay)
        self._observer.notification("failed")
        log.warning("alert webhook %s: gave up on a notification (%s)", target.host, problem)
