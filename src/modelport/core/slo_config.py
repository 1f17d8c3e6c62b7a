"""`slo:` in a model's config.yaml: objectives for each served version, judged over a window of
its recent requests (core/slo.py decides; operations/alerting.py runs the loop)."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_SLO_WINDOW_SECONDS = 15 * 60
"""The longest SLO window: the server keeps its last 15 minutes of requests per version
(observability/window.py's HISTORY_SECONDS; a unit test checks they agree)."""


def parse_duration(value: object, what: str) -> float:
    """Seconds from '50ms', '1.5s', '5m', '1h' (or '500us'); a bare number is refused, since
    'p99_latency: 50' could mean seconds or milliseconds."""
    if isinstance(value, str):
        text = value.strip().lower()
        unit = next((u for u in ("us", "ms", "s", "m", "h") if text.endswith(u)), None)
        if unit is not None:
            try:
                seconds = float(text[: -len(unit)]) * _DURATION_UNITS[unit]
            except ValueError:
                seconds = math.nan
            if math.isfinite(seconds):
                return seconds
        raise ValueError(f"{what} {value!r} is not a duration like '50ms', '2s' or '5m'")
    raise ValueError(f"{what} needs a unit: write it as a string like '50ms', '2s' or '5m'")


def parse_rate(value: object) -> float:
    """A fraction from '1%', '0.5%' or a number between 0 and 1 (0.01)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            rate = float(value.strip()[:-1]) / 100
        except ValueError:
            raise ValueError(f"error_rate {value!r} is not a percentage like '1%'") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        rate = float(value)
        if rate >= 1:
            raise ValueError(
                f"error_rate {value!r} is a fraction of requests (0.01 = 1 %); "
                f"write '{value}%' for a percentage"
            )
    else:
        raise ValueError(f"error_rate {value!r} must be a percentage ('1%') or a fraction (0.01)")
    if not 0 <= rate < 1:
        raise ValueError(f"error_rate {value!r} must be at least 0 % and below 100 %")
    return rate


class SloConfig(BaseModel):
    """A model's service-level objectives, checked per version over a sliding window
    (`slo: {p99_latency: 50ms, error_rate: 1%, window: 5m}`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    p99_latency: float | None = None
    """Seconds the 99th percentile of successful requests' latency may reach."""
    error_rate: float | None = None
    """Fraction of requests that may fail for the server's reasons (unavailable, timeout,
    internal); a client's bad request does not count."""
    window: float = 300.0
    """Seconds of recent requests each objective is judged over."""
    min_requests: int = Field(default=20, ge=1, strict=True)
    """Requests a version must have had in the window before an objective can be breached, so
    an idle version (or one request that failed) does not alert."""
    for_seconds: float = Field(default=0.0, alias="for")
    """How long a breach must last before its alert fires; it fires no sooner than the
    evaluation after the first one that saw it breached."""
    auto_rollback: bool = True
    """A canary (a version with a traffic share that is not the stable one) that breaches while
    the stable version meets its objectives gets its share moved back to stable."""

    @field_validator("p99_latency", mode="before")
    @classmethod
    def _latency(cls, value: object) -> float | None:
        if value is None:
            return None
        seconds = parse_duration(value, "p99_latency")
        if not 0 < seconds <= 3600:
            raise ValueError(f"p99_latency {value!r} must be above 0 and at most 1h")
        return seconds

    @field_validator("error_rate", mode="before")
    @classmethod
    def _rate(cls, value: object) -> float | None:
        return None if value is None else parse_rate(value)

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, value: object) -> float:
        seconds = parse_duration(value, "window")
        if not 1 <= seconds <= MAX_SLO_WINDOW_SECONDS:
            raise ValueError(
                f"window {value!r} must be between 1s and 15m (the server keeps 15 minutes of "
                "requests per version)"
            )
        return seconds

    @field_validator("for_seconds", mode="before")
    @classmethod
    def _hold(cls, value: object) -> float:
        seconds = parse_duration(value, "for")
        if not 0 <= seconds <= 3600:
            raise ValueError(f"for {value!r} must be between 0s and 1h")
        return seconds

    @model_validator(mode="after")
    def _some_objective(self) -> SloConfig:
        if self.p99_latency is None and self.error_rate is None:
            raise ValueError("an slo needs at least one objective: p99_latency or error_rate")
        return self
