"""Process-wide logging set-up for `modelport serve`: text or JSON lines on stderr.

`--log-format json` writes one JSON object per line: `time` (UTC, ISO 8601 with microseconds),
`level`, `logger`, `message`, the record's extra fields (those not None) (an access line's `status`,
`latency_ms`, ...), `process` in a worker of several, and `exception` with the traceback when
there is one. uvicorn's loggers propagate to the same handler (serving.py passes no log config).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from modelport.observability.access_log import ACCESS_LOGGER, AccessRecord

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
LogFormat = Literal["text", "json"]

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colour codes
}
"""A LogRecord's own attributes (and uvicorn's coloured copy of the message): anything else on a
record came in as an extra field."""


def configure(
    level: str = "INFO",
    with_pid: bool = False,
    log_format: LogFormat = "text",
    access_log: bool = True,
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(with_pid=with_pid))
    else:
        handler.setFormatter(logging.Formatter(WORKER_FORMAT if with_pid else FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # --no-access-log: the frontends ask the logger first and then build no record at all
    logging.getLogger(ACCESS_LOGGER).disabled = not access_log


class JsonFormatter(logging.Formatter):
    """One JSON object per record, extras included; values JSON cannot hold become strings."""

    def __init__(self, with_pid: bool = False) -> None:
        super().__init__()
        self._with_pid = with_pid

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": (
                record.summary() if isinstance(record, AccessRecord) else record.getMessage()
            ),
        }
        if self._with_pid:
            document["process"] = record.process
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in document and value is not None:
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(document, default=str).decode()
