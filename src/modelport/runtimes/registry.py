"""Runtimes by platform name: the built-in ones plus the `modelport.runtimes` entry-point group.

A factory is a callable returning a Runtime or a "module:qualname" reference to one (see
factories.py); a runtime that runs in worker processes needs one that pickles.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from modelport.core.config import ModelConfig
from modelport.core.errors import ConfigError, MissingDependency
from modelport.core.runtime import ModelHost, Runtime
from modelport.runtimes.executor import host_model
from modelport.runtimes.factories import FactoryRef, create

log = logging.getLogger("modelport.runtimes")

ENTRY_POINT_GROUP = "modelport.runtimes"

BUILTIN: dict[str, FactoryRef] = {
    "onnx": "modelport.runtimes.onnx:OnnxRuntime",
    "torch": "modelport.runtimes.torch_runtime:TorchRuntime",
    "sklearn": "modelport.runtimes.tabular:SklearnRuntime",
    "xgboost": "modelport.runtimes.tabular:XGBoostRuntime",
    "lightgbm": "modelport.runtimes.tabular:LightGBMRuntime",
    "tensorflow": "modelport.runtimes.tensorflow_runtime:TensorFlowRuntime",
    "python": "modelport.runtimes.python_model:PythonRuntime",
}
"""References, not classes: a platform's module (and framework) imports when a model needs it."""

MODEL_FILES: dict[str, str] = {
    "model.onnx": "onnx",
    "model.pt": "torch",
    "model.pt2": "torch",
    "model.joblib": "sklearn",
    "model.pkl": "sklearn",
    "model.json": "xgboost",
    "model.ubj": "xgboost",
    "model.txt": "lightgbm",
    "model.savedmodel": "tensorflow",
    "model.keras": "tensorflow",
    "model.h5": "tensorflow",
    "model.py": "python",
}
"""The file-name convention: which platform a version directory's model file implies. Looking
it up needs no framework imported."""

_BY_SUFFIX = {Path(name).suffix: platform for name, platform in MODEL_FILES.items()}


class RuntimeRegistry:
    """Creates runtimes on first use: optional frameworks import only when a model needs them."""

    def __init__(self, factories: Mapping[str, FactoryRef] | None = None) -> None:
        self._factories = dict(BUILTIN if factories is None else factories)
        self._instances: dict[str, Runtime] = {}
        if factories is None:
            self._add_entry_points()

    def _add_entry_points(self) -> None:
        for point in entry_points(group=ENTRY_POINT_GROUP):
            if point.name in self._factories:
                log.warning("runtime %s from %s ignored: name taken", point.name, point.value)
                continue
            self._factories[point.name] = _reference(point)

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
            runtime = create(factory)
        except ImportError as exc:
            extra = platform if platform in BUILTIN else None
            how = f"pip install 'modelport[{extra}]'" if extra else f"pip install {exc.name}"
            raise MissingDependency(
                f"platform '{platform}' needs {exc.name}, which is not installed; "
                f"install it with: {how}"
            ) from exc
        self._instances[platform] = runtime
        return runtime

    def runtime_for(self, version_dir: Path, config: ModelConfig) -> Runtime:
        """The runtime config.yaml names, or the one the model file's name implies."""
        if config.platform:
            return self.get(config.platform)
        custom = config.default_model_filename
        if custom and (version_dir / custom).exists():
            platform = MODEL_FILES.get(custom) or _BY_SUFFIX.get(Path(custom).suffix)
            if platform is None:
                raise ConfigError(
                    f"cannot tell the platform of {custom} from its name; set `platform:` "
                    "in config.yaml"
                )
            return self.get(platform)
        found = [name for name in MODEL_FILES if (version_dir / name).exists()]
        platforms = list(dict.fromkeys(MODEL_FILES[name] for name in found))
        if len(platforms) > 1:
            raise ConfigError(
                f"{version_dir.name}/ holds {', '.join(found)}, which belong to different "
                f"platforms ({', '.join(platforms)}); name one with `platform:` in config.yaml"
            )
        if platforms:
            return self.get(platforms[0])
        for platform in self.platforms:  # third-party runtimes know their own file names
            if platform in BUILTIN:
                continue
            runtime = self.get(platform)
            if runtime.find_model_file(version_dir, config) is not None:
                return runtime
        raise ConfigError(
            f"no model file found in {version_dir.name}/ and config.yaml names no platform "
            f"(expected one of {', '.join(MODEL_FILES)})"
        )

    def host(
        self, runtime: Runtime, version_dir: Path, config: ModelConfig, label: str
    ) -> ModelHost:
        return host_model(runtime, self._factory_of(runtime), version_dir, config, label)

    def _factory_of(self, runtime: Runtime) -> FactoryRef | None:
        """The factory that created `runtime`, which worker processes create theirs with."""
        for platform, created in self._instances.items():
            if created is runtime:
                return self._factories[platform]
        return self._factories.get(runtime.platform)


def _reference(point: EntryPoint) -> str:
    """An entry point's object as a "module:qualname" reference (without its extras)."""
    return f"{point.module}:{point.attr}" if point.attr else point.value
