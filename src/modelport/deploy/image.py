"""`modelport build`'s build context: a multi-stage Dockerfile, a .dockerignore, the
requirements, modelport's wheel and (unless --no-models) the model repository.

Layers go from what changes least to what changes most: the Python dependencies (only the
extras the repository's models need), then modelport's wheel, then the models. A new model
version rebuilds the last layer only. The second stage starts from a clean base again and
takes only the virtualenv: no pip cache, no wheels, no build leftovers.
"""

from __future__ import annotations

import json
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from modelport.__about__ import __version__
from modelport.deploy.conventions import (
    GRPC_PORT,
    HTTP_PORT,
    IMAGE_MODELS,
    READY_PATH,
    USER_ID,
    USER_NAME,
)
from modelport.repository.local import LocalRepository

DEFAULT_BASE_IMAGE = "python:3.11-slim"
"""Debian slim with the Python modelport is developed and tested on."""

VENV = "/opt/modelport"
STAGING = "/tmp/modelport"
REQUIREMENTS = "requirements.txt"
WHEELS = "wheels"
MODELS = "models"

# The HEALTHCHECK: python from the base image (curl is not in slim images), standard library
# only. With TLS the certificate is not checked: the probe talks to 127.0.0.1, which is not a
# name the certificate was issued for. A 503 (not ready) raises, so the check fails.
_HEALTH_PROBE = """\
import os, ssl, urllib.request
tls = bool(os.environ.get('MODELPORT_TLS_CERT'))
context = ssl.create_default_context() if tls else None
if context:
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
port = os.environ.get('MODELPORT_HTTP_PORT', '{port}')
url = ('https' if tls else 'http') + '://127.0.0.1:' + port + '{path}'
urllib.request.urlopen(url, timeout=4, context=context)
"""

DOCKERIGNORE = """\
# Only what the Dockerfile copies is sent to the builder.
*
!{requirements}
!{wheels}/
!{models}/
# Hidden entries: a rollback's .retired-* versions, publishing's staging folders, editor files.
{models}/**/.*
**/__pycache__
**/*.pyc
"""


@dataclass(frozen=True)
class ImagePlan:
    image: str
    wheel_name: str
    requirements: tuple[str, ...]
    extras: tuple[str, ...]
    include_models: bool = True
    base_image: str = DEFAULT_BASE_IMAGE
    packages: tuple[str, ...] = field(default=())
    """Requirements given with --pip (a Python model's imports, a third-party runtime)."""


def health_probe() -> str:
    return _HEALTH_PROBE.format(port=HTTP_PORT, path=READY_PATH)


def dockerfile(plan: ImagePlan) -> str:
    wheel = f"{STAGING}/{WHEELS}/{plan.wheel_name}"
    extras = ", ".join(plan.extras) if plan.extras else "none"
    lines = [
        f"# Written by `modelport build` (modelport {__version__}) for {plan.image}.",
        f"# Extras for the repository's models: {extras}.",
        "",
        f"FROM {plan.base_image} AS build",
        "ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1",
        f"RUN python -m venv {VENV}",
        "# Dependencies first: this layer is rebuilt only when requirements.txt changes.",
        f"COPY {REQUIREMENTS} {STAGING}/{REQUIREMENTS}",
        f"RUN {VENV}/bin/pip install --no-cache-dir --requirement {STAGING}/{REQUIREMENTS}",
        "# modelport itself, built from the project it was installed from.",
        f"COPY {WHEELS}/ {STAGING}/{WHEELS}/",
        f"RUN {VENV}/bin/pip install --no-cache-dir --no-deps {wheel}",
        f"RUN {VENV}/bin/pip check",
        "",
        f"FROM {plan.base_image}",
        f"RUN groupadd --system --gid {USER_ID} {USER_NAME} && useradd --system --uid {USER_ID} "
        f"--gid {USER_ID} --create-home --shell /usr/sbin/nologin {USER_NAME}",
        f"COPY --from=build {VENV} {VENV}",
        f'ENV PATH="{VENV}/bin:$PATH" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \\',
        f"    MODELPORT_HTTP_PORT={HTTP_PORT} MODELPORT_GRPC_PORT={GRPC_PORT} \\",
        f"    MODELPORT_MODEL_REPOSITORY={IMAGE_MODELS}",
    ]
    if plan.include_models:
        lines += [
            "# The models last: a new version rebuilds this layer only. Owned by root, readable",
            "# by the server's user, which cannot change them.",
            f"COPY {MODELS}/ {IMAGE_MODELS}/",
        ]
    else:
        lines += [
            f"# No models in the image: mount a repository at {IMAGE_MODELS}",
            f'# (docker run -v "$PWD/models:{IMAGE_MODELS}:ro" ...), or point',
            "# MODELPORT_MODEL_REPOSITORY elsewhere (KServe: /mnt/models).",
        ]
    lines += [
        f"USER {USER_ID}:{USER_ID}",
        f"WORKDIR /home/{USER_NAME}",
        f"EXPOSE {HTTP_PORT} {GRPC_PORT}",
        "HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \\",
        f"    CMD {json.dumps(['python', '-c', health_probe()])}",
        "# A reachable address needs API keys (MODELPORT_API_KEYS=FILE, or MODELPORT_API_KEY)",
        "# or MODELPORT_ALLOW_UNAUTHENTICATED=true behind an authenticating gateway; any other",
        "# `modelport serve` option is a MODELPORT_* variable too.",
        'ENTRYPOINT ["modelport", "serve", "--host", "0.0.0.0"]',
        "",
    ]
    return "\n".join(lines)


def requirements_text(plan: ImagePlan) -> str:
    lines = [
        f"# modelport's dependencies with extras: {', '.join(plan.extras) or 'none'}",
        *plan.requirements,
    ]
    if plan.packages:
        lines += ["# given with --pip", *plan.packages]
    return "\n".join(lines) + "\n"


def write_context(plan: ImagePlan, directory: Path, wheel: Path, repository: Path) -> None:
    """Fills `directory` (an existing folder, empty but for wheels/) with the context."""
    (directory / "Dockerfile").write_text(dockerfile(plan), encoding="utf-8")
    (directory / ".dockerignore").write_text(
        DOCKERIGNORE.format(requirements=REQUIREMENTS, wheels=WHEELS, models=MODELS),
        encoding="utf-8",
    )
    (directory / REQUIREMENTS).write_text(requirements_text(plan), encoding="utf-8")
    wheels = directory / WHEELS
    wheels.mkdir(exist_ok=True)
    if wheel.parent.resolve() != wheels.resolve():
        shutil.copy2(wheel, wheels / wheel.name)
    if plan.include_models:
        copy_repository(repository, directory / MODELS)


def copy_repository(repository: Path, target: Path) -> None:
    """The models the server would see (LocalRepository's scan: no hidden entries, no links
    out of the repository), with files readable by everyone and writable by their owner only,
    so the image's user can read them whatever the originals' modes were."""
    scan = LocalRepository(repository)
    target.mkdir()
    for name in scan.model_names():
        shutil.copytree(
            scan.root / name,
            target / name,
            ignore=shutil.ignore_patterns(".*", "__pycache__"),
        )
    _make_readable(target)


def _make_readable(root: Path) -> None:
    root.chmod(0o755)
    for path in root.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
        else:
            executable = path.stat().st_mode & stat.S_IXUSR
            path.chmod(0o755 if executable else 0o644)
