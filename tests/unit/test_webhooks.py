"""Alert webhooks (operations/webhooks.py) against a real HTTP receiver the test runs (uvicorn on
a free port): Alertmanager's payload, firing then resolved in order, retries that outlast the
receiver's downtime, a bounded queue that drops its oldest, no retry of a refusal, and logs that
never show a webhook URL's path or token."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelport.core.alerts import AlertBook
from modelport.core.slo import Reading
from modelport.operations.webhooks import WebhookSender, webhook_host
from tests.support import free_port

TOKEN = "s3cr3t-t0ken"
PATH = f"/hooks/{TOKEN}"
WAIT = 30.0
"""Ends a test whose receiver never gets its notifications; nothing passes or fails by it."""


@dataclass
class Outcomes:
    counts: dict[str, int] = field(default_factory=dict)

    def alert_state(self, model: str, version: str, slo: str, firing: bool) -> None:
        pass

    def rolled_back(self, model: str, version: str) -> None:
        pass

    def notification(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1


@dataclass
class Receiver:
    port: int
    status: int = 200
    received: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}?token={TOKEN}"

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.received) < count:
                await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def listening(receiver: Receiver) -> AsyncIterator[Receiver]:
    async def hook(request: Request) -> Response:
        receiver.paths.append(request.url.path)
        if receiver.status == 200:
            receiver.received.append(orjson.loads(await request.body()))
        return Response(status_code=receiver.status)

    app = Starlette(routes=[Route(PATH, hook, methods=["POST"])])
    config = uvicorn.Config(app, host="127.0.0.1", port=receiver.port, log_level="warning")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(WAIT):
        while not server.started:
            await asyncio.sleep(0.01)
    try:
        yield receiver
    finally:
        server.should_exit = True
        await task


def sender(receiver: Receiver, outcomes: Outcomes, **options: Any) -> WebhookSender:
    return WebhookSender(
        [receiver.url],
        outcomes,
        external_url="http://modelport.test:8000",
        first_backoff=0.05,
        max_backoff=0.2,
        **options,
    )


def test_a_receiver_gets_firing_then_resolved_in_alertmanagers_format(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        outcomes = Outcomes()
        async with listening(Receiver(free_port())) as receiver:
            webhooks = sender(receiver, outcomes)
            webhooks.start()
            book = AlertBook()
            bad = Reading("error_rate", 0.2, 0.01, 100, True)
            book.observe("m", "2", bad, 300, 0, now=1, wall=1.8e9)
            fired = book.observe("m", "2", bad, 300, 0, now=2, wall=1.8e9 + 5)
            assert fired is not None
            webhooks.send(fired)
            ok = Reading("error_rate", 0.0, 0.01, 90, False)
            resolved = book.observe("m", "2", ok, 300, 0, now=3, wall=1.8e9 + 60)
            assert resolved is not None
            webhooks.send(resolved)
            await receiver.wait_for(2)
            await webhooks.stop()
        first, second = receiver.received
        assert first["version"] == "4" and first["status"] == "firing"
        assert first["receiver"] == "modelport"
        assert first["externalURL"] == "http://modelport.test:8000"
        labels = {
            "alertname": "ModelportErrorRateSLO",
            "model": "m",
            "version": "2",
            "slo": "error_rate",
            "severity": "critical",
        }
        assert first["groupLabels"] == labels and first["commonLabels"] == labels
        assert first["groupKey"] == (
            '{}:{alertname="ModelportErrorRateSLO", model="m", severity="critical", '
            'slo="error_rate", version="2"}'
        )
        [alert] = first["alerts"]
        assert alert["status"] == "firing" and alert["labels"] == labels
        assert alert["annotations"]["summary"] == "m version 2: error_rate 20% > 1% over 5m"
        assert "failed for the server's reasons" in alert["annotations"]["description"]
        assert first["commonAnnotations"] == alert["annotations"]
        assert alert["startsAt"] == "2027-01-15T08:00:05.000Z"
        assert alert["endsAt"] == "0001-01-01T00:00:00Z"
        assert alert["generatorURL"] == "http://modelport.test:8000/v2/alerts"
        assert len(alert["fingerprint"]) == 16
        assert second["status"] == "resolved"
        [ended] = second["alerts"]
        assert ended["status"] == "resolved" and ended["endsAt"] == "2027-01-15T08:01:00.000Z"
        assert ended["startsAt"] == alert["startsAt"]
        assert ended["fingerprint"] == alert["fingerprint"]  # the same alert, ended
        assert outcomes.counts == {"delivered": 2}
        assert TOKEN not in caplog.text

    caplog.set_level(logging.DEBUG, logger="modelport")
    asyncio.run(main())


def test_retries_deliver_once_the_receiver_is_back(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        outcomes = Outcomes()
        receiver = Receiver(free_port())  # not listening yet: connections are refused
        webhooks = sender(receiver, outcomes)
        webhooks.start()
        book = AlertBook()
        bad = Reading("p99_latency", 0.3, 0.05, 100, True)
        book.observe("m", "1", bad, 10, 0, now=1, wall=1.8e9)
        fired = book.observe("m", "1", bad, 10, 0, now=2, wall=1.8e9 + 5)
        assert fired is not None
        webhooks.send(fired)
        ok = Reading("p99_latency", 0.01, 0.05, 100, False)
        resolved = book.observe("m", "1", ok, 10, 0, now=3, wall=1.8e9 + 9)
        assert resolved is not None
        webhooks.send(resolved)
        async with asyncio.timeout(WAIT):  # a few attempts fail while it is down
            while caplog.text.count("attempt") < 3:
                await asyncio.sleep(0.02)
        assert receiver.received == []
        async with listening(receiver):
            await receiver.wait_for(2)
            await webhooks.stop()
        assert [r["status"] for r in receiver.received] == ["firing", "resolved"]
        assert outcomes.counts == {"delivered": 2}
        assert "alert webhook 127.0.0.1:" in caplog.text and "ConnectError" in caplog.text
        assert TOKEN not in caplog.text and "/hooks" not in caplog.text

    caplog.set_level(logging.INFO, logger="modelport")
    asyncio.run(main())


def test_a_full_queue_drops_its_oldest_and_counts_it() -> None:
    async def main() -> None:
        outcomes = Outcomes()
        receiver = Receiver(free_port())
        webhooks = sender(receiver, outcomes, queue_size=2)
        book = AlertBook()
        sent = []
        for number in range(5):  # queued before the sender starts: nothing is delivered yet
            bad = Reading("p99_latency", 0.3, 0.05, 100, True)
            book.observe("m", str(number), bad, 10, 0, now=1, wall=1.8e9)
            fired = book.observe("m", str(number), bad, 10, 0, now=2, wall=1.8e9)
            assert fired is not None
            webhooks.send(fired)
            sent.append(str(number))
        assert outcomes.counts == {"dropped": 3}
        async with listening(receiver):
            webhooks.start()
            await receiver.wait_for(2)
            await webhooks.stop()
        assert [r["commonLabels"]["version"] for r in receiver.received] == ["3", "4"]

    asyncio.run(main())


def test_a_refusal_is_not_retried() -> None:
    async def main() -> None:
        outcomes = Outcomes()
        async with listening(Receiver(free_port(), status=400)) as receiver:
            webhooks = sender(receiver, outcomes)
            webhooks.start()
            book = AlertBook()
            bad = Reading("p99_latency", 0.3, 0.05, 100, True)
            book.observe("m", "1", bad, 10, 0, now=1, wall=1.8e9)
            fired = book.observe("m", "1", bad, 10, 0, now=2, wall=1.8e9)
            assert fired is not None
            webhooks.send(fired)
            async with asyncio.timeout(WAIT):
                while "failed" not in outcomes.counts:
                    await asyncio.sleep(0.02)
            await webhooks.stop()
        assert receiver.paths == [PATH]  # one attempt
        assert outcomes.counts == {"failed": 1}

    asyncio.run(main())


def test_logs_name_the_host_only() -> None:
    assert webhook_host("https://user:pw@hooks.example.com:8443/t/abc?key=1") == (
        "hooks.example.com:8443"
    )
    assert webhook_host("http://hooks.example.com/t/abc") == "hooks.example.com"
