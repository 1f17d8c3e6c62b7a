"""A model repository on the local file system: REPO/NAME/[config.yaml] + REPO/NAME/N/ versions."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml
from pydantic import ValidationError

from modelport.core.config import ModelConfig
from modelport.core.errors import ModelNotFound
from modelport.core.manager import ModelDefinition
from modelport.repository.paths import VERSION_DIR, inside, is_model_name, model_dir

log = logging.getLogger("modelport.repository")

CONFIG_FILE = "config.yaml"
MAX_CONFIG_BYTES = 1 << 20


class LocalRepository:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {root} is not a directory")

    def contains(self, path: Path) -> bool:
        return inside(self.root, path)

    def model_names(self) -> list[str]:
        names = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if not is_model_name(entry.name):
                log.warning("skipping %s: not a valid model name", entry.name)
                continue
            if not inside(self.root, entry):
                log.warning("skipping %s: it links outside the model repository", entry.name)
                continue
            names.append(entry.name)
        return names

    def read(self, name: str) -> ModelDefinition:
        directory = model_dir(self.root, name)
        if not directory.is_dir():
            raise ModelNotFound(f"unknown model '{name}'")
        versions = self._versions(directory)
        try:
            config = self._config(directory, name)
        except ValueError as exc:
            return ModelDefinition(name, ModelConfig(), versions, error=str(exc))
        return ModelDefinition(name, config, versions)

    def _versions(self, directory: Path) -> dict[int, Path]:
        versions = {}
        for entry in directory.iterdir():
            if not (VERSION_DIR.match(entry.name) and entry.is_dir()):
                continue
            if not inside(self.root, entry):
                log.warning("skipping %s: it links outside the model repository", entry)
                continue
            versions[int(entry.name)] = entry
        return versions

    def _config(self, directory: Path, name: str) -> ModelConfig:
        path = directory / CONFIG_FILE
        if not path.exists():
            return ModelConfig(name=name)
        if not inside(self.root, path):
            raise ValueError(f"{CONFIG_FILE} links outside the model repository")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"{CONFIG_FILE} is larger than {MAX_CONFIG_BYTES} bytes")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ValueError(f"{CONFIG_FILE} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{CONFIG_FILE} must be a mapping, not {type(raw).__name__}")
        raw.setdefault("name", name)
        if raw["name"] != name:
            raise ValueError(
                f"{CONFIG_FILE} names the model '{raw['name']}' but its directory is '{name}'"
            )
        try:
            return ModelConfig.model_validate(raw)
        except ValidationError as exc:
            raise ValueError(f"invalid {CONFIG_FILE}: {_summarize(exc)}") from None


def _summarize(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(item) for item in error["loc"]) or "(top level)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
