"""Application builders: what a Serve config file's `import_path` names, and what
`modelport ray serve` runs.

    modelport.ray_serve:model_app   args: settings, model, [load, options, metrics_interval]
    modelport.ray_serve:front_app   args: settings, models, [options, metrics_interval]

`modelport ray config` writes a config file with one front and one model application per model
(plan.py); README "Running on Ray Serve" shows one.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from ray.serve import Application

from modelport.ray_serve.deployments import FRONT, METRICS_HUB, MODEL
from modelport.ray_serve.options import (
    MODEL_DEFAULTS,
    FrontAppArgs,
    ModelAppArgs,
    RayServeSettingsError,
    check_settings,
)


def model_app(args: dict[str, Any]) -> Application:
    try:
        parsed = ModelAppArgs(**args)
    except ValidationError as exc:
        raise RayServeSettingsError(f"modelport.ray_serve:model_app args: {exc}") from None
    settings = check_settings(parsed.settings)
    options = parsed.options.over(MODEL_DEFAULTS).serve_options()
    return MODEL.options(**options).bind(
        settings, parsed.model, parsed.load or [parsed.model], parsed.metrics_interval
    )


def front_app(args: dict[str, Any]) -> Application:
    try:
        parsed = FrontAppArgs(**args)
    except ValidationError as exc:
        raise RayServeSettingsError(f"modelport.ray_serve:front_app args: {exc}") from None
    settings = check_settings(parsed.settings)
    hub = METRICS_HUB.bind(parsed.metrics_interval)
    return FRONT.options(**parsed.options.serve_options()).bind(
        settings, parsed.models, hub, parsed.metrics_interval
    )
