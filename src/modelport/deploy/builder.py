"""Running `docker build` or `podman build` on a context, when either is installed."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BUILDERS = ("docker", "podman")


@dataclass(frozen=True)
class BuildResult:
    builder: str | None
    """The tool that ran, or None when neither is installed."""
    returncode: int
    command: tuple[str, ...]


def find_builder() -> tuple[str, str] | None:
    """(name, path) of the first of docker and podman on PATH."""
    for name in BUILDERS:
        path = shutil.which(name)
        if path is not None:
            return name, path
    return None


def build_command(tool: str, image: str, context: Path) -> tuple[str, ...]:
    return (tool, "build", "--tag", image, str(context))


def run_build(image: str, context: Path) -> BuildResult:
    """Builds with the builder's own output on this terminal; its exit status comes back."""
    found = find_builder()
    if found is None:
        return BuildResult(None, 0, build_command("docker", image, context))
    name, path = found
    command = build_command(path, image, context)
    done = subprocess.run(command, check=False)
    return BuildResult(name, done.returncode, build_command(name, image, context))
