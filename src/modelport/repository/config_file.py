"""Model configuration text (config.yaml, or the YAML/JSON a load request carries) -> config."""

from __future__ import annotations

import yaml

from modelport.core.config import MAX_CONFIG_BYTES, ModelConfig, config_from_mapping


def parse_config(text: str, name: str, source: str = "the config") -> ModelConfig:
    """A model config from YAML (or JSON, which YAML reads too); ValueError names the problem."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ValueError(f"{source} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source} is not valid YAML or JSON: {exc}") from None
    return config_from_mapping(raw, name, source)
