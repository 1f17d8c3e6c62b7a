"""Backends that load and run one model version each, registered by platform name."""

from modelport.runtimes.registry import RuntimeRegistry

__all__ = ["RuntimeRegistry"]
