"""From a model repository to a build context: what its models need, modelport's wheel, the
requirements of the extras they need, and the files of image.py."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modelport.deploy.image import DEFAULT_BASE_IMAGE, WHEELS, ImagePlan, write_context
from modelport.deploy.repository_needs import RepositoryNeeds, scan_repository
from modelport.deploy.wheel import (
    PackagingError,
    build_wheel,
    check_requirement,
    copy_wheel,
    project_source,
    wheel_requirements,
)


class ContextError(Exception):
    """No context can be written; the message says why."""


@dataclass(frozen=True)
class BuildContext:
    directory: Path
    plan: ImagePlan
    needs: RepositoryNeeds


def check_repository(repository: Path) -> RepositoryNeeds:
    """The repository's needs, or ContextError naming every model whose needs are unknown."""
    try:
        needs = scan_repository(repository)
    except FileNotFoundError as exc:
        raise ContextError(str(exc)) from None
    if not needs.models:
        raise ContextError(f"{repository} holds no models (NAME/VERSION/model.onnx, ...)")
    if needs.problems:
        listed = "\n  ".join(needs.problems)
        raise ContextError(f"cannot tell what these models need:\n  {listed}")
    return needs


def make_context(
    repository: Path,
    image: str,
    directory: Path | None = None,
    *,
    include_models: bool = True,
    extras: Iterable[str] = (),
    packages: Iterable[str] = (),
    wheel: Path | None = None,
    base_image: str = DEFAULT_BASE_IMAGE,
) -> BuildContext:
    needs = check_repository(repository)
    packages = tuple(check_requirement(p) for p in packages)
    if needs.third_party_platforms and not packages:
        raise ContextError(
            f"models use platforms from other packages ({', '.join(needs.third_party_platforms)}):"
            " add the packages that provide them with --pip"
        )
    target = fresh_directory(directory)
    wheels = target / WHEELS
    if wheel is not None:
        built = copy_wheel(wheel, wheels)
    else:
        source = project_source()
        if source is None:
            raise PackagingError(
                "this modelport was not installed from a project folder, so there is no "
                "source to build its wheel from: pass --wheel FILE (a modelport wheel)"
            )
        built = build_wheel(source, wheels)
    chosen = tuple(sorted({*needs.extras, *extras}))
    plan = ImagePlan(
        image=image,
        wheel_name=built.name,
        requirements=tuple(wheel_requirements(built, chosen)),
        extras=chosen,
        include_models=include_models,
        base_image=base_image,
        packages=packages,
    )
    write_context(plan, target, built, repository)
    return BuildContext(target, plan, needs)


def fresh_directory(directory: Path | None) -> Path:
    """`directory`, created if missing and refused if it holds anything; or a new one."""
    if directory is None:
        return Path(tempfile.mkdtemp(prefix="modelport-build-"))
    if directory.exists():
        if not directory.is_dir():
            raise ContextError(f"{directory} is not a directory")
        if any(directory.iterdir()):
            raise ContextError(f"{directory} is not empty; give a new or empty directory")
    directory.mkdir(parents=True, exist_ok=True)
    return directory
