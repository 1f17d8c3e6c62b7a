"""How deeply a parsed config.pbtxt nests, walked without recursion.

YAML and JSON config files are bounded before they are parsed (repository/safe_yaml.py); the
pbtxt reader builds its dicts first, so they are walked here, against the same 64 levels.
"""

from __future__ import annotations

from typing import Any

from modelport.repository.safe_yaml import MAX_DEPTH


def check_nesting(value: Any, source: str, limit: int = MAX_DEPTH) -> None:
    """ValueError if dicts and lists in `value` nest deeper than `limit`."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 > limit:
            raise ValueError(f"{source} is nested deeper than {limit} levels")
        pending.extend((child, depth + 1) for child in children)
