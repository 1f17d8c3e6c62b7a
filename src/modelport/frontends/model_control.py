"""The parameters of the v2 repository extension's load and unload requests, for both frontends."""

from __future__ import annotations

from typing import Any

from modelport.core.errors import InvalidInput
from modelport.repository.safe_yaml import check_bounded

LOAD_CONFIG = "the load request's config"


def load_config(parameters: dict[str, Any]) -> str | None:
    """The config text a load request brings along (`config`: YAML or JSON), if any; the data
    plane has it parsed by the repository, which knows the config formats. The text is checked
    here first, for both frontends, against the bounds of safe_yaml (size, depth, aliases
    expanded), so a YAML bomb is refused (400 / INVALID_ARGUMENT) before anything walks it."""
    for key in parameters:
        if key.startswith("file:"):
            raise InvalidInput(
                "a load request cannot carry model files; publish them into the repository "
                "(modelport deploy) and load the model by name"
            )
        if key != "config":
            raise InvalidInput(f"unknown load parameter '{key}' (known: config)")
    text = parameters.get("config")
    if text is not None and not isinstance(text, str):
        raise InvalidInput("the load parameter 'config' must be a string of YAML or JSON")
    if text is not None:
        check_bounded(text, what=LOAD_CONFIG)
    return text


def check_unload_parameters(parameters: dict[str, Any]) -> None:
    for key in parameters:
        if key != "unload_dependents":
            raise InvalidInput(f"unknown unload parameter '{key}' (known: unload_dependents)")
