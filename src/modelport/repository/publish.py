"""Changing a model repository safely, for the operator's CLI: publish a version, move a label,
roll back. A server watching the repository never sees a half-done change:

- a version is copied into a hidden staging directory beside the model and renamed into place
  (a rename within one file system is atomic); the repository ignores names starting with '.';
- config.yaml is rewritten through a temporary file and os.replace;
- a rolled-back version is renamed to a hidden `.retired-N-TIME` directory, not deleted, so
  rolling back is itself undone by renaming it back.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelport.core.config import ModelConfig
from modelport.core.errors import ModelNotFound
from modelport.core.manager import STABLE
from modelport.core.slo import moved_share
from modelport.repository.config_file import parse_config
from modelport.repository.local import CONFIG_FILE
from modelport.repository.paths import VERSION_DIR, model_dir
from modelport.runtimes.registry import MODEL_FILES


class PublishError(Exception):
    """A repository change that cannot be made; the message says why."""


@dataclass(frozen=True, slots=True)
class Published:
    name: str
    version: int
    path: Path


def versions_on_disk(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in directory.iterdir()
        if VERSION_DIR.match(entry.name) and entry.is_dir()
    )


def read_raw_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.exists():
        return {}
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise PublishError(f"{path} is not a mapping")
    return raw


def write_config(directory: Path, name: str, raw: dict[str, Any]) -> ModelConfig:
    """Validate, then replace config.yaml in one step (comments in the old file are not kept)."""
    text = yaml.safe_dump(raw, sort_keys=False)
    try:
        config = parse_config(text, name, CONFIG_FILE)
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    descriptor, temporary = tempfile.mkstemp(prefix=".config-", suffix=".yaml", dir=directory)
    with os.fdopen(descriptor, "w", encoding="utf-8") as sink:
        sink.write(text)
    Path(temporary).replace(directory / CONFIG_FILE)
    return config


def publish(
    repository: Path,
    name: str,
    source: Path,
    *,
    version: int | None = None,
    label: str | None = None,
    traffic: float | None = None,
    extras: Sequence[Path] = (),
) -> Published:
    """Copy a model file (or directory) in as a new version, atomically; optionally label it and
    give it a share of the traffic (the rest goes to the version labelled stable). `extras`
    (a report, say) are copied beside the model under their own names."""
    directory = _directory(repository, name)
    if not source.exists():
        raise PublishError(f"{source} does not exist")
    for extra in extras:
        if extra.name in MODEL_FILES or extra.name == _model_name(source):
            raise PublishError(f"{extra.name} would be taken for a model file; rename it")
    existing = versions_on_disk(directory)
    number = version if version is not None else (max(existing, default=0) + 1)
    if number < 1:
        raise PublishError("versions are positive integers")
    target = directory / str(number)
    if target.exists():
        raise PublishError(f"{name} version {number} already exists; pick another --version")
    if traffic is not None and not label:
        raise PublishError("--traffic needs --label (for example --label canary)")
    raw = read_raw_config(directory)
    previous = raw.get("labels", {}).get(STABLE) or (max(existing) if existing else None)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{number}-", dir=directory))
    try:
        if source.is_dir():
            shutil.copytree(source, staging / _model_name(source), dirs_exist_ok=False)
        else:
            shutil.copy2(source, staging / _model_name(source))
        for extra in extras:
            shutil.copy2(extra, staging / extra.name)
        if label:  # routing first: a label naming a version not yet on disk is ignored
            labels = dict(raw.get("labels") or {})
            labels[label] = number
            raw["labels"] = labels
            if traffic is not None:
                if previous is None:
                    raise PublishError("--traffic needs an earlier version to share traffic with")
                raw["traffic"] = {int(previous): 100 - traffic, number: traffic}
            write_config(directory, name, raw)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Published(name, number, target)


def set_label(repository: Path, name: str, version: int, label: str) -> ModelConfig:
    """Point a label at a version. Promoting to stable also ends any traffic split: all
    requests that name no version go to the new stable version."""
    directory = _directory(repository, name)
    if version not in versions_on_disk(directory):
        raise PublishError(f"{name} has no version {version} in {repository}")
    raw = read_raw_config(directory)
    raw["labels"] = {**(raw.get("labels") or {}), label: version}
    if label == STABLE:
        raw.pop("traffic", None)
        raw["labels"] = {k: v for k, v in raw["labels"].items() if k == STABLE or v != version}
    return write_config(directory, name, raw)


def shift_traffic(repository: Path, name: str, source: int, target: int) -> bool:
    """Move `source`'s traffic share to `target` in config.yaml, leaving `source` at 0 (what the
    server does to a canary that breaches its SLO). False when the file's split gives `source`
    no share or does not name `target` (nothing to change)."""
    directory = _directory(repository, name)
    raw = read_raw_config(directory)
    traffic = raw.get("traffic")
    if not isinstance(traffic, dict):
        return False
    weights = {int(version): float(weight) for version, weight in traffic.items()}
    if not weights.get(source) or target not in weights:
        return False
    raw["traffic"] = moved_share(weights, source, target)
    write_config(directory, name, raw)
    return True


def rollback(repository: Path, name: str, to: int | None = None) -> tuple[int, list[int]]:
    """Go back to version `to` (default: the one before the newest): newer versions are moved
    aside, labels pointing at them are dropped, and `to` becomes stable."""
    directory = _directory(repository, name)
    existing = versions_on_disk(directory)
    if to is None:
        if len(existing) < 2:
            raise PublishError(f"{name} has no earlier version to roll back to")
        to = existing[-2]
    if to not in existing:
        raise PublishError(f"{name} has no version {to} in {repository}")
    newer = [v for v in existing if v > to]
    raw = read_raw_config(directory)
    labels = {k: v for k, v in (raw.get("labels") or {}).items() if v not in newer}
    labels[STABLE] = to
    raw["labels"] = labels
    raw.pop("traffic", None)
    write_config(directory, name, raw)  # requests move to `to` before the newer ones go
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for version in newer:
        (directory / str(version)).rename(directory / f".retired-{version}-{stamp}")
    return to, newer


def _directory(repository: Path, name: str) -> Path:
    try:
        return model_dir(repository.resolve(), name)
    except ModelNotFound as exc:
        raise PublishError(exc.message) from None


def _model_name(source: Path) -> str:
    """Files follow the repository's naming convention: model.<extension>."""
    if source.name in MODEL_FILES:
        return source.name
    suffix = "".join(source.suffixes[-1:])
    return f"model{suffix}" if suffix else source.name
