"""What a model repository needs to be served: its models' platforms, the modelport extras that
install those platforms' frameworks, and the model formats KServe knows them by.

The platform of a version comes from the same places the server looks: `platform:` in its
config, else the file-name convention of runtimes/registry.py (MODEL_FILES). Nothing here
imports a framework, so a repository of torch models can be packaged on a machine without torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modelport.core.config import ModelConfig
from modelport.repository.local import LocalRepository
from modelport.runtimes.registry import BUILTIN, MODEL_FILES

PIPELINE = "pipeline"

BASE_PLATFORMS = frozenset({"onnx", "python"})
"""Served by modelport's own dependencies. Every other built-in platform has an extra of its
name (`pip install 'modelport[torch]'`), as the registry's MissingDependency message says."""

KSERVE_FORMATS: dict[str, str] = {
    "onnx": "onnx",
    "torch": "pytorch",
    "sklearn": "sklearn",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "tensorflow": "tensorflow",
}
"""modelport platform -> the modelFormat name KServe's runtimes use for it (Triton's and
MLServer's ClusterServingRuntimes). Python models and pipelines have none."""

REPOSITORY_FORMAT = "modelport"
"""The modelFormat of a whole modelport repository: what an InferenceService names when its
models are of several formats (KServe's Triton runtime does the same with `triton`)."""

TRITON_FORMAT = "triton"
"""A Triton-layout repository (config.pbtxt per model), which modelport reads too."""

_BY_SUFFIX = {Path(name).suffix: platform for name, platform in MODEL_FILES.items()}


@dataclass(frozen=True)
class ModelNeeds:
    name: str
    platforms: frozenset[str]
    """Every platform its version directories use ("pipeline" for a pipeline)."""
    problem: str | None = None
    """Why its needs cannot be told (an unreadable config, a model file of no known platform)."""


@dataclass(frozen=True)
class RepositoryNeeds:
    models: tuple[ModelNeeds, ...]

    @property
    def platforms(self) -> frozenset[str]:
        return frozenset(p for model in self.models for p in model.platforms)

    @property
    def extras(self) -> tuple[str, ...]:
        """modelport extras to install, sorted."""
        return tuple(sorted(p for p in self.platforms if p in BUILTIN and p not in BASE_PLATFORMS))

    @property
    def third_party_platforms(self) -> tuple[str, ...]:
        """Platforms of runtimes from other packages (the `modelport.runtimes` entry points)."""
        known = {*BUILTIN, PIPELINE}
        return tuple(sorted(p for p in self.platforms if p not in known))

    @property
    def kserve_formats(self) -> tuple[str, ...]:
        return tuple(sorted({KSERVE_FORMATS[p] for p in self.platforms if p in KSERVE_FORMATS}))

    @property
    def problems(self) -> tuple[str, ...]:
        return tuple(f"{m.name}: {m.problem}" for m in self.models if m.problem is not None)

    def inference_service_format(self) -> str:
        """The one KServe format of every model, or the repository's format when they differ
        (or when a model has none: Python models, third-party runtimes)."""
        formats = {KSERVE_FORMATS.get(p) for p in self.platforms if p != PIPELINE}
        if len(formats) == 1:
            (only,) = formats
            if only is not None:
                return only
        return REPOSITORY_FORMAT


def scan_repository(root: Path) -> RepositoryNeeds:
    """Every model the server would see in `root` (LocalRepository's scan) and what it needs."""
    repository = LocalRepository(root)
    return RepositoryNeeds(tuple(_model_needs(repository, n) for n in repository.model_names()))


def _model_needs(repository: LocalRepository, name: str) -> ModelNeeds:
    definition = repository.read(name)
    if definition.error is not None:
        return ModelNeeds(name, frozenset(), definition.error)
    config = definition.config
    if config.pipeline:
        return ModelNeeds(name, frozenset({PIPELINE}))
    if not definition.versions:
        return ModelNeeds(name, frozenset(), "no version directories (NAME/1/, NAME/2/, ...)")
    try:
        platforms = frozenset(platform_of(d, config) for d in definition.versions.values())
    except ValueError as exc:
        return ModelNeeds(name, frozenset(), str(exc))
    return ModelNeeds(name, platforms)


def platform_of(version_dir: Path, config: ModelConfig) -> str:
    """The platform a version directory is served with, as RuntimeRegistry.runtime_for picks it
    for the built-in runtimes, without creating any runtime."""
    if config.platform:
        return config.platform
    custom = config.default_model_filename
    if custom and (version_dir / custom).exists():
        platform = MODEL_FILES.get(custom) or _BY_SUFFIX.get(Path(custom).suffix)
        if platform is None:
            raise ValueError(
                f"cannot tell the platform of {custom} from its name; set `platform:` in "
                "config.yaml"
            )
        return platform
    found = [name for name in MODEL_FILES if (version_dir / name).exists()]
    platforms = _unique(MODEL_FILES[name] for name in found)
    if len(platforms) > 1:
        raise ValueError(
            f"{version_dir.name}/ holds {', '.join(found)}, which belong to different platforms "
            f"({', '.join(platforms)}); name one with `platform:` in config.yaml"
        )
    if not platforms:
        raise ValueError(
            f"no model file of a known platform in {version_dir.name}/ and config.yaml names "
            f"no platform (expected one of {', '.join(MODEL_FILES)}, or `platform:` for a "
            "third-party runtime)"
        )
    return platforms[0]


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
