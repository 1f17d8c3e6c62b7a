"""Which Serve applications serve a model repository, without importing Ray.

One application per model, at route prefix `/v2/models/NAME`, so Ray's proxy sends every v2
request for a model straight to that model's replicas and each model scales on its own; a
pipeline's replicas load the models its steps call too (a pipeline runs its steps in-process).
One front application at `/` answers the rest: the server-wide routes, TF Serving's
`/v1/models/NAME` (passed on to the model's deployment) and the merged `/metrics`.
The same plan is what `modelport ray serve` deploys and what `modelport ray config` writes as a
Serve config file, so both run the same applications with the same arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.ray_serve.options import DeploymentOptions, RayOptionsFile, RayServeSettingsError
from modelport.repository import LocalRepository

FRONT_APP = "~modelport"
"""The front application's name: '~' is in no model name (repository/paths.py), so no model's
application can take it."""
MODEL_BUILDER = "modelport.ray_serve:model_app"
FRONT_BUILDER = "modelport.ray_serve:front_app"


@dataclass(frozen=True, slots=True)
class AppSpec:
    """One Serve application: what `serve.run` or a config file's `applications` entry gets."""

    name: str
    route_prefix: str
    import_path: str
    args: dict[str, Any]


def model_route(name: str) -> str:
    return f"/v2/models/{name}"


def model_groups(repository: Path) -> dict[str, tuple[str, ...]]:
    """Each model and what its replicas load: itself, then every model its pipeline steps call
    (recursively, each once)."""
    repo = LocalRepository(repository)
    names = repo.model_names()
    steps: dict[str, list[str]] = {}
    for name in names:
        config = repo.read(name).config
        steps[name] = [step.model for step in config.pipeline]

    def closure(name: str) -> tuple[str, ...]:
        seen = [name]
        pending = list(steps.get(name, ()))
        while pending:
            step = pending.pop(0)
            if step not in seen:
                seen.append(step)
                pending.extend(steps.get(step, ()))
        return tuple(seen)

    return {name: closure(name) for name in names}


def plan(
    settings: Mapping[str, Any],
    options: RayOptionsFile,
    replicas: int | None = None,
    metrics_interval: float = 2.0,
) -> list[AppSpec]:
    """The front, then one application per model. `settings`: modelport settings (already
    checked by options.check_settings) with `model_repository` set."""
    repository = settings.get("model_repository")
    if repository is None:
        raise RayServeSettingsError("give --model-repository: Ray replicas need the path")
    groups = model_groups(Path(repository))
    unknown = sorted(set(options.models) - set(groups))
    if unknown:
        raise RayServeSettingsError(
            f"the Ray options name models that are not in the repository: {', '.join(unknown)}"
        )

    def common() -> dict[str, Any]:  # a copy each: a YAML dump would share one by reference
        return {"settings": _plain(settings), "metrics_interval": metrics_interval}

    front = AppSpec(
        FRONT_APP,
        "/",
        FRONT_BUILDER,
        {**common(), "models": list(groups), "options": _options(options.front)},
    )
    apps = [front]
    for name, load in groups.items():
        chosen = options.for_model(name, replicas)
        chosen.serve_options()  # both a count and autoscaling: refused before anything starts
        apps.append(
            AppSpec(
                name,
                model_route(name),
                MODEL_BUILDER,
                {**common(), "model": name, "load": list(load), "options": _options(chosen)},
            )
        )
    return apps


def serve_config(apps: list[AppSpec], host: str, port: int) -> dict[str, Any]:
    """A Serve config file (`serve deploy FILE` / `serve run FILE`) deploying `apps`."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [
            {
                "name": app.name,
                "route_prefix": app.route_prefix,
                "import_path": app.import_path,
                "args": app.args,
            }
            for app in apps
        ],
    }


def _options(options: DeploymentOptions) -> dict[str, Any]:
    return options.model_dump(exclude_none=True)


def _plain(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as a config file holds them: paths as text, tuples as lists; secrets never
    (MODELPORT_API_KEY is read from each replica's environment)."""
    plain: dict[str, Any] = {}
    for name, value in settings.items():
        if name == "api_key":
            continue
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        plain[name] = value
    return plain
