"""Runtimes by platform name: the built-in ones plus the `modelport.runtimes` entry-point group."""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from modelport.core.config import ModelConfig
from modelport.core.errors import ConfigError, MissingDependency
from modelport.core.runtime import Runtime

log = logging.getLogger("modelport.runtimes")

ENTRY_POINT_GROUP = "modelport.runtimes"

RuntimeFactory = Callable[[], Runtime]


def _onnx() -> Runtime:
    from modelport.runtimes.onnx import OnnxRuntime

    return OnnxRuntime()


BUILTIN: dict[str, RuntimeFactory] = {"onnx": _onnx}


class RuntimeRegistry:
    """Creates runtimes on first use: optional frameworks import only when a model needs them."""

    def __init__(self, factories: dict[str, RuntimeFactory] | None = None) -> None:
        self._factories = dict(BUILTIN if factories is None else factories)
        self._instances: dict[str, Runtime] = {}
        if factories is None:
            self._add_entry_points()

    def _add_entry_points(self) -> None:
        for point in entry_points(group=ENTRY_POINT_GROUP):
            if point.name in self._factories:
                log.warning("runtime %s from %s ignored: name taken", point.name, point.value)
                continue
            self._factories[point.name] = point.load

    @property
    def platforms(self) -> list[str]:
        return sorted(self._factories)

    def get(self, platform: str) -> Runtime:
        runtime = self._instances.get(platform)
        if runtime is not None:
            return runtime
        factory = self._factories.get(platform)
        if factory is None:
            raise ConfigError(
                f"unknown platform '{platform}' (available: {', '.join(self.platforms)})"
            )
        try:
            runtime = factory()
        except ImportError as exc:
            raise MissingDependency(
                f"platform '{platform}' needs a package that is not installed ({exc.name}); "
                f"install it with: pip install 'modelport[{platform}]'"
            ) from exc
        self._instances[platform] = runtime
        return runtime

    def runtime_for(self, version_dir: Path, config: ModelConfig) -> Runtime:
        """The runtime config.yaml names, or the one whose model file is in version_dir."""
        if config.platform:
            return self.get(config.platform)
        for platform in self.platforms:
            runtime = self.get(platform)
            if runtime.find_model_file(version_dir, config) is not None:
                return runtime
        raise ConfigError(
            f"no model file found in {version_dir.name}/ and config.yaml names no platform "
            "(expected e.g. model.onnx)"
        )
