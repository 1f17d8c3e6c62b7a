"""Path checks: every file the server opens lies inside the model repository."""

from __future__ import annotations

import re
from pathlib import Path

from modelport.core.errors import ModelNotFound

MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
VERSION_DIR = re.compile(r"^[1-9][0-9]{0,17}$")


def is_model_name(name: str) -> bool:
    return bool(MODEL_NAME.match(name)) and ".." not in name


def inside(root: Path, candidate: Path) -> bool:
    """True when candidate, with symlinks resolved, is root or lies under it."""
    try:
        candidate.resolve(strict=False).relative_to(root.resolve())
    except ValueError:
        return False
    return True


def model_dir(root: Path, name: str) -> Path:
    """The directory of model `name`, refusing names that could reach outside root."""
    if not is_model_name(name):
        raise ModelNotFound(f"'{name}' is not a valid model name")
    path = root / name
    if not inside(root, path):
        raise ModelNotFound(f"model '{name}' resolves outside the model repository")
    return path
