"""Formatting shared by the benchmarks' Markdown reports."""

from __future__ import annotations

import statistics


def span(values: list[float], digits: int = 0) -> str:
    """`median [min-max]` of the rounds' values ("-" when there are none)."""
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{statistics.median(values):,.{digits}f} [{low:,.{digits}f}-{high:,.{digits}f}]"
