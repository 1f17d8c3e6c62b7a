"""Log lines: the JSON formatter, the access record, request ids, and the REST middleware that
writes one access line per request (driven as plain ASGI, with a stub app beneath it)."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from modelport.frontends.rest.access_guard import KEY_NAME
from modelport.frontends.rest.request_log import CLIENT_GONE, RequestLog
from modelport.observability import access_log
from modelport.observability.logging import JsonFormatter, configure


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """What configure()'s handler writes, in a buffer; the root logger restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)
    logging.getLogger(access_log.ACCESS_LOGGER).disabled = False


def use(stream: io.StringIO, log_format: str = "json", access: bool = True) -> None:
    configure("info", log_format=log_format, access_log=access)  # type: ignore[arg-type]
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_time_level_logger_message_and_extras(captured: io.StringIO) -> None:
    use(captured)
    logging.getLogger("modelport.test").warning("loaded %s", "m", extra={"model": "m", "n": 3})
    (line,) = lines(captured)
    assert line["level"] == "WARNING" and line["logger"] == "modelport.test"
    assert line["message"] == "loaded m"
    assert line["model"] == "m" and line["n"] == 3
    assert line["time"].endswith("+00:00") and "T" in line["time"]
    assert not {"args", "msg", "levelno", "pathname"} & set(line)


def test_json_lines_keep_the_traceback_and_turn_odd_values_into_text(
    captured: io.StringIO,
) -> None:
    use(captured)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("modelport.test").exception("failed", extra={"where": object()})
    (line,) = lines(captured)
    assert "ValueError: boom" in line["exception"] and line["message"] == "failed"
    assert line["where"].startswith("<object object")


def test_the_worker_format_names_the_process() -> None:
    record = logging.LogRecord("x", logging.INFO, "", 0, "hi", None, None)
    assert orjson.loads(JsonFormatter(with_pid=True).format(record))["process"] == record.process


def access_line(**overrides: Any) -> None:
    fields: dict[str, Any] = {
        "protocol": "rest",
        "method": "POST",
        "path": "/v2/models/m/infer",
        "model": "m",
        "version": "2",
        "status": 200,
        "latency_ns": 1_234_567,
        "request_id": "abc",
        "client": "10.0.0.1",
        "key": "ci",
        "trace_id": None,
    }
    access_log.record(**(fields | overrides))


def test_an_access_line_in_json_has_its_fields_and_no_empty_ones(captured: io.StringIO) -> None:
    use(captured)
    access_line()
    (line,) = lines(captured)
    assert line["logger"] == "modelport.access" and line["level"] == "INFO"
    assert line["message"] == "POST /v2/models/m/infer 200"
    expected = {
        "protocol": "rest",
        "method": "POST",
        "path": "/v2/models/m/infer",
        "model": "m",
        "version": "2",
        "status": 200,
        "latency_ms": 1.235,
        "request_id": "abc",
        "client": "10.0.0.1",
        "key": "ci",
    }
    assert {name: line[name] for name in expected} == expected
    assert "trace_id" not in line and "messages" not in line


def test_an_access_line_in_text_reads_as_one_line(captured: io.StringIO) -> None:
    use(captured, "text")
    access_line(trace_id="0af7651916cd43dd8448eb211c80319c", key=None)
    text = captured.getvalue()
    assert text.count("\n") == 1
    assert (
        "INFO modelport.access: rest POST /v2/models/m/infer 200 1.235ms model=m version=2 "
        "client=10.0.0.1 request_id=abc trace_id=0af7651916cd43dd8448eb211c80319c"
    ) in text
    assert "key=" not in text


def test_no_access_log_turns_the_lines_off(captured: io.StringIO) -> None:
    use(captured, access=False)
    assert not access_log.wanted()
    logging.getLogger("modelport.other").info("still here")
    assert [line["message"] for line in lines(captured)] == ["still here"]
    use(captured, access=True)
    assert access_log.wanted()


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (b"req-42:a.b_c", True),
        (b"x" * 128, True),
        (b"x" * 129, False),
        (b"", False),
        (None, False),
        (b"has space", False),
        (b"line\nbreak", False),
        ("caf\u00e9".encode(), False),
    ],
)
def test_a_clients_request_id_is_kept_only_when_sane(given: bytes | None, kept: bool) -> None:
    request_id = access_log.accept_request_id(given)
    if kept:
        assert given is not None and request_id == given.decode()
    else:
        assert len(request_id) == 16 and int(request_id, 16) >= 0
    assert access_log.new_request_id() != access_log.new_request_id()


# ---- the REST middleware --------------------------------------------------------------------


async def answering(scope: Scope, receive: Receive, send: Send) -> None:
    """A stub app: like AccessGuard, leaves the key's name in the scope; answers 201."""
    scope[KEY_NAME] = "ci"
    scope["path_params"] = {"model": "m", "version": "7"}
    await send({"type": "http.response.start", "status": 201, "headers": [(b"a", b"b")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def silent(scope: Scope, receive: Receive, send: Send) -> None:
    """A stub app whose client went away: it answers nothing."""


def exchange(app: Any, headers: list[tuple[bytes, bytes]]) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v2/models/m/versions/7",
        "headers": headers,
        "client": ("10.1.2.3", 5555),
    }
    asyncio.run(RequestLog(app, None)(scope, receive, send))
    return sent


def test_the_middleware_echoes_the_request_id_and_logs_one_line(captured: io.StringIO) -> None:
    use(captured)
    sent = exchange(answering, [(b"x-request-id", b"given-1"), (b"authorization", b"Bearer s3")])
    assert sent[0]["headers"] == [(b"a", b"b"), (b"x-request-id", b"given-1")]
    (line,) = lines(captured)
    assert line["request_id"] == "given-1" and line["status"] == 201
    assert (line["model"], line["version"], line["key"]) == ("m", "7", "ci")
    assert line["client"] == "10.1.2.3" and line["protocol"] == "rest"
    assert "s3" not in captured.getvalue()  # never the key


def test_the_middleware_makes_a_request_id_when_none_came(captured: io.StringIO) -> None:
    use(captured)
    sent = exchange(answering, [])
    (name, value) = sent[0]["headers"][-1]
    assert name == b"x-request-id" and len(value) == 16
    assert lines(captured)[0]["request_id"] == value.decode()


def test_a_request_nobody_answered_is_logged_as_client_gone(captured: io.StringIO) -> None:
    use(captured)
    assert exchange(silent, []) == []
    assert lines(captured)[0]["status"] == CLIENT_GONE
