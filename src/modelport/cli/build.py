"""`modelport build`: a container build context for a model repository, built when docker or
podman is installed."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("build")
@click.option(
    "--model-repository",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="The repository to serve: baked into the image, and what decides its extras.",
)
@click.option("-t", "--tag", "image", required=True, help="The image's name[:tag].")
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the build context here (new or empty; default: a fresh temporary folder).",
)
@click.option(
    "--no-models",
    is_flag=True,
    help="Leave the models out: the image expects a repository mounted at /models.",
)
@click.option(
    "--extra",
    "extras",
    multiple=True,
    help="A modelport extra to install besides those the models need (e.g. queue; repeatable).",
)
@click.option(
    "--pip",
    "packages",
    multiple=True,
    help="A further requirement (a Python model's imports, a third-party runtime; repeatable).",
)
@click.option(
    "--wheel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The modelport wheel to install (default: built from the project modelport was "
    "installed from).",
)
@click.option(
    "--base-image",
    default=None,
    help="Base of both stages (default python:3.11-slim).",
)
@click.option(
    "--build/--no-build",
    "run_builder",
    default=True,
    help="Run docker or podman build on the context (default: when one is installed).",
)
def build(
    model_repository: Path,
    image: str,
    output: Path | None,
    no_models: bool,
    extras: tuple[str, ...],
    packages: tuple[str, ...],
    wheel: Path | None,
    base_image: str | None,
    run_builder: bool,
) -> None:
    """Build a container image that serves a model repository.

    Writes the build context (Dockerfile, .dockerignore, requirements, modelport's wheel, the
    models), prints its folder, and runs docker or podman build on it when one is installed."""
    from modelport.deploy.build_context import ContextError, make_context
    from modelport.deploy.builder import run_build
    from modelport.deploy.conventions import image_problem
    from modelport.deploy.image import DEFAULT_BASE_IMAGE
    from modelport.deploy.wheel import PackagingError

    for reference in (image, base_image or DEFAULT_BASE_IMAGE):
        problem = image_problem(reference)
        if problem is not None:
            raise click.BadParameter(problem)
    try:
        context = make_context(
            model_repository,
            image,
            output,
            include_models=not no_models,
            extras=extras,
            packages=packages,
            wheel=wheel,
            base_image=base_image or DEFAULT_BASE_IMAGE,
        )
    except (ContextError, PackagingError) as exc:
        raise click.ClickException(str(exc)) from None
    extras_shown = ", ".join(context.plan.extras) or "none"
    click.echo(f"build context (extras: {extras_shown}):", err=True)
    click.echo(str(context.directory))
    if not run_builder:
        return
    result = run_build(image, context.directory)
    shown = " ".join(result.command)
    if result.builder is None:
        click.echo(
            f"neither docker nor podman is installed, so no image was built; build it "
            f"elsewhere with: {shown}",
            err=True,
        )
        return
    if result.returncode != 0:
        click.echo(
            f"{result.builder} build failed (exit {result.returncode}; is its daemon or "
            f"service running?). The context is kept in {context.directory}; to retry: {shown}",
            err=True,
        )
        sys.exit(1)
    click.echo(f"built {image} with {result.builder}", err=True)
