"""modelport on Ray Serve: one Serve application per model plus a front (README, "Running on
Ray Serve"; docs/architecture.md, "Ray Serve"). `ray` is imported in this package only, and
nothing on the serving path imports this package (import-linter contracts in pyproject.toml).

The import paths a Serve config file uses are `modelport.ray_serve:model_app` and
`modelport.ray_serve:front_app`. They are looked up lazily, so `options` and `plan` (no Ray)
can be imported where Ray is not installed.
"""

from __future__ import annotations

from typing import Any

BUILDERS = ("model_app", "front_app")


def __getattr__(name: str) -> Any:
    if name in BUILDERS:
        from modelport.ray_serve import builders

        return getattr(builders, name)
    raise AttributeError(f"module 'modelport.ray_serve' has no attribute '{name}'")
