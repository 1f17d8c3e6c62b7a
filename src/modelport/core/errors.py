"""The one error hierarchy. Each error names a transport-free kind; frontends/status.py maps kinds
to HTTP status codes and gRPC codes."""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    NOT_FOUND = "not_found"
    INVALID_INPUT = "invalid_input"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    PRECONDITION = "precondition"
    INTERNAL = "internal"


class ModelportError(Exception):
    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotFound(ModelportError):
    kind = ErrorKind.NOT_FOUND


class ModelNotReady(ModelportError):
    kind = ErrorKind.UNAVAILABLE


class InvalidInput(ModelportError):
    kind = ErrorKind.INVALID_INPUT


class PayloadTooLarge(ModelportError):
    kind = ErrorKind.TOO_LARGE


class Unauthenticated(ModelportError):
    kind = ErrorKind.UNAUTHENTICATED


class Forbidden(ModelportError):
    kind = ErrorKind.FORBIDDEN


class RateLimited(ModelportError):
    """Over a rate limit or an in-flight cap (a model's or an API key's); `retry_after` is the
    seconds until a request would be let through (HTTP Retry-After)."""

    kind = ErrorKind.RATE_LIMITED

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerBusy(ModelportError):
    kind = ErrorKind.UNAVAILABLE


class DeadlineExceeded(ModelportError):
    kind = ErrorKind.TIMEOUT


class NotAllowed(ModelportError):
    """The request is valid but the server's mode forbids it (e.g. loading models while the
    repository is polled)."""

    kind = ErrorKind.PRECONDITION


class LoadFailed(ModelportError):
    """A model control request asked for a model that could not be loaded."""

    kind = ErrorKind.INVALID_INPUT


class InferenceFailed(ModelportError):
    """The runtime raised while running a batch that passed validation."""

    kind = ErrorKind.INTERNAL


class ModelLoadError(ModelportError):
    """A model version could not be loaded; its message becomes the version's FAILED reason."""

    kind = ErrorKind.INTERNAL


class ConfigError(ModelLoadError):
    """A model's configuration is invalid or contradicts the model file."""


class MissingDependency(ModelLoadError):
    """A runtime needs an optional package that is not installed."""


class InternalError(ModelportError):
    """Something failed that is nobody's input: the client learns only that."""

    kind = ErrorKind.INTERNAL


def public_error(exc: BaseException) -> ModelportError:
    """What a client is told of an exception, the same over every frontend: a ModelportError
    as it is; of anything else only its type (the frontend logs the traceback)."""
    if isinstance(exc, ModelportError):
        return exc
    return InternalError(f"internal error: {type(exc).__name__}")
