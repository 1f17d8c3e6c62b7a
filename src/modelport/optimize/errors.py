"""Errors of the optimization toolkit. The CLI turns each into a message and a non-zero exit."""

from __future__ import annotations

from typing import Any


class OptimizeError(Exception):
    """An optimization step that cannot be done; the message says why."""


class DataError(OptimizeError):
    """A data file that cannot be read or does not fit the model."""


class ConversionMismatch(OptimizeError):
    """The converted model's outputs differ from the original's beyond the tolerance."""


class GateRefused(OptimizeError):
    """The candidate lost more accuracy than the budget allows; nothing was deployed. The
    report (already written to disk) comes along to be shown."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report
