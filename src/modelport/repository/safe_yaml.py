"""YAML (and JSON, which YAML reads too) from a source nobody vouches for, with bounds.

`yaml.safe_load` makes no objects it should not, but it trusts the text's shape: a 600-byte
"billion laughs" (anchors whose aliases repeat each other nine times over, nine levels deep)
loads as a small graph of shared lists that anything walking it (comparing configs,
validating, copying) sees as a billion nodes; an alias inside its own anchor loads as a list
that contains itself, which recursion never finishes; and thousands of nested brackets exhaust
the interpreter's stack. So before anything is built the parser's events are counted, in one
pass with no recursion: the text's size, the nesting depth as seen through aliases, and the
nodes with every alias expanded. Aliases stay allowed (config files use them to repeat a block,
and YAML 1.2 keeps them) while the expansion is within the node budget; one that refers to the
collection it sits in is refused, as is an undefined one.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from modelport.core.config import MAX_CONFIG_BYTES
from modelport.core.errors import InvalidInput

MAX_DEPTH = 64
"""Nesting levels (mappings and lists, through aliases). A model config needs a handful."""
MAX_NODES = 100_000
"""Nodes after every alias is expanded: scalars, mappings and lists. A large config (an
ensemble of many steps, a long label list) has a few thousand; walking 100,000 takes
milliseconds, a billion laughs' 10^9 minutes."""
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_OPENS = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSES = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


class YamlRefused(InvalidInput, ValueError):
    """The text is not YAML, or is over a bound. An InvalidInput (400 / INVALID_ARGUMENT to a
    client) and a ValueError, as the repository's config readers report a bad config."""


@dataclass(slots=True)
class _Open:
    """A mapping or list whose end event has not come yet."""

    anchor: str | None
    nodes_before: int
    tallest_child: int = 0


def check_bounded(
    text: str,
    *,
    what: str,
    max_bytes: int = MAX_CONFIG_BYTES,
    max_depth: int = MAX_DEPTH,
    max_nodes: int = MAX_NODES,
) -> None:
    """Raise YamlRefused, naming `what` (e.g. "the load request's config") and the bound, unless
    `text` is one valid YAML stream within the bounds. Costs one pass of the C parser's events;
    stops at the first bound crossed, so a bomb is refused after a few events."""
    if len(text) > max_bytes or len(text.encode("utf-8", "replace")) > max_bytes:
        raise YamlRefused(f"{what} is larger than {max_bytes} bytes")
    try:
        _check_events(text, what, max_depth, max_nodes)
    except yaml.YAMLError as exc:
        raise YamlRefused(f"{what} is not valid YAML or JSON: {exc}") from None


def load_bounded(
    text: str,
    *,
    what: str,
    max_bytes: int = MAX_CONFIG_BYTES,
    max_depth: int = MAX_DEPTH,
    max_nodes: int = MAX_NODES,
) -> object:
    """`yaml.safe_load(text)` once check_bounded has passed it; YamlRefused otherwise."""
    check_bounded(text, what=what, max_bytes=max_bytes, max_depth=max_depth, max_nodes=max_nodes)
    try:
        return yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise YamlRefused(f"{what} is not valid YAML or JSON: {exc}") from None


def _check_events(text: str, what: str, max_depth: int, max_nodes: int) -> None:
    nodes = 0
    heights: dict[str, int] = {}  # anchor -> levels of collections under it (0: a scalar)
    sizes: dict[str, int] = {}  # anchor -> nodes it stands for, its aliases expanded
    stack: list[_Open] = []
    for event in yaml.parse(text, Loader=_LOADER):
        height = 0
        if isinstance(event, _OPENS):
            if len(stack) >= max_depth:
                raise YamlRefused(f"{what} is nested deeper than {max_depth} levels")
            stack.append(_Open(event.anchor, nodes))
            nodes += 1
        elif isinstance(event, _CLOSES):
            closed = stack.pop()
            height = closed.tallest_child + 1
            if closed.anchor is not None:
                heights[closed.anchor] = height
                sizes[closed.anchor] = nodes - closed.nodes_before
        elif isinstance(event, yaml.ScalarEvent):
            nodes += 1
            if event.anchor is not None:
                heights[event.anchor], sizes[event.anchor] = 0, 1
        elif isinstance(event, yaml.AliasEvent):
            anchor = event.anchor
            if any(entry.anchor == anchor for entry in stack):
                raise YamlRefused(f"{what}: the alias *{anchor} is inside its own anchor")
            if anchor not in sizes:
                raise YamlRefused(f"{what}: the alias *{anchor} has no anchor before it")
            height = heights[anchor]
            if len(stack) + height > max_depth:
                raise YamlRefused(
                    f"{what} is nested deeper than {max_depth} levels (with *{anchor} expanded)"
                )
            nodes += sizes[anchor]
        elif isinstance(event, yaml.DocumentStartEvent):
            heights.clear()  # anchors are a document's own
            sizes.clear()
        if nodes > max_nodes:
            raise YamlRefused(
                f"{what} holds more than {max_nodes} values with its aliases expanded"
            )
        if stack and height > stack[-1].tallest_child:
            stack[-1].tallest_child = height
