"""What a Serve deployment of modelport is configured with, without importing Ray.

`DeploymentOptions` are Ray's own per-deployment options; `RayOptionsFile` is the
`--ray-options FILE` document (a default for every model, overrides per model, and the front's);
`replica_settings` and `front_settings` turn the user's modelport settings into what each replica
builds its server from. Settings that Ray decides (ports, the address, processes) or that cannot
work behind Ray's proxy are refused here, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelport.settings import ServerSettings

DEFAULT_MAX_ONGOING_REQUESTS = 256
"""Ray's default is 5 requests per replica, which would keep modelport's batcher from ever
seeing more than 5 requests to join; the model's own limits (max_in_flight, queue) still apply."""

DECIDED_BY_RAY = {
    "host": "Ray's proxy is the address: --http-host",
    "http_port": "Ray's proxy is the port: --http-port",
    "grpc_port": "replicas open no gRPC port (README, 'Running on Ray Serve')",
    "workers": "Ray runs the replicas: --replicas or num_replicas",
    "load_model": "every model of the repository gets its own deployment",
}
UNSUPPORTED = {
    "queue": "message queues are served by `modelport serve --queue`, not by Ray replicas",
    "tls_cert": "Ray's proxy serves plain HTTP here: terminate TLS in front of it",
    "tls_key": "Ray's proxy serves plain HTTP here: terminate TLS in front of it",
    "tls_client_ca": "Ray's proxy serves plain HTTP here: terminate TLS in front of it",
}


class RayServeSettingsError(ValueError):
    """Settings a Serve deployment cannot take, with the reason."""


class DeploymentOptions(BaseModel):
    """Ray Serve's options for one deployment (None: Ray's default, or the default options')."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int | Literal["auto"] | None = Field(default=None)
    autoscaling_config: dict[str, Any] | None = None
    ray_actor_options: dict[str, Any] | None = None
    max_ongoing_requests: int | None = Field(default=None, ge=1)

    def over(self, base: DeploymentOptions) -> DeploymentOptions:
        """These options where set, `base`'s elsewhere. An autoscaling config given here
        replaces a fixed replica count from `base` (Ray takes one or the other)."""
        mine = self.model_dump(exclude_none=True)
        merged = {**base.model_dump(exclude_none=True), **mine}
        if "autoscaling_config" in mine and "num_replicas" not in mine:
            merged.pop("num_replicas", None)
        return DeploymentOptions(**merged)

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options`."""
        options = self.model_dump(exclude_none=True)
        if isinstance(self.num_replicas, int) and self.num_replicas < 1:
            raise RayServeSettingsError("num_replicas must be at least 1")
        if self.autoscaling_config is not None and isinstance(self.num_replicas, int):
            raise RayServeSettingsError(
                "give num_replicas or autoscaling_config for a deployment, not both"
            )
        return options


MODEL_DEFAULTS = DeploymentOptions(max_ongoing_requests=DEFAULT_MAX_ONGOING_REQUESTS)


class RayOptionsFile(BaseModel):
    """`--ray-options FILE`: YAML or JSON with `default`, `models: {NAME: ...}` and `front`."""

    model_config = ConfigDict(extra="forbid")

    default: DeploymentOptions = DeploymentOptions()
    models: dict[str, DeploymentOptions] = {}
    front: DeploymentOptions = DeploymentOptions()

    def for_model(self, name: str, replicas: int | None) -> DeploymentOptions:
        base = MODEL_DEFAULTS
        if replicas is not None:
            base = DeploymentOptions(num_replicas=replicas).over(base)
        chosen = self.default.over(base)
        own = self.models.get(name)
        return own.over(chosen) if own is not None else chosen

    @classmethod
    def read(cls, path: Path) -> RayOptionsFile:
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise RayServeSettingsError(f"cannot read the Ray options file {path}: {exc}") from None
        if not isinstance(document, dict):
            raise RayServeSettingsError(f"the Ray options file {path} is not a mapping")
        try:
            return cls(**document)
        except ValidationError as exc:
            raise RayServeSettingsError(f"the Ray options file {path}: {_problems(exc)}") from None


def check_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The user's modelport settings for the replicas, refused with the reason when Ray decides
    them or they cannot work behind its proxy; validated as a server's settings would be."""
    for name, reason in {**DECIDED_BY_RAY, **UNSUPPORTED}.items():
        if values.get(name) not in (None, (), [], ""):
            raise RayServeSettingsError(f"'{name}' cannot be set on Ray Serve: {reason}")
    mode = values.get("model_control_mode", "none")
    if mode != "none":
        raise RayServeSettingsError(
            f"model control mode '{mode}' cannot be used on Ray Serve: each model's replicas "
            "load it when they start; deploy again to change the models"
        )
    chosen = {name: value for name, value in values.items() if value is not None}
    replica_settings(chosen, ())  # a bad value is reported now, not in every replica
    return chosen


def replica_settings(values: Mapping[str, Any], load: tuple[str, ...]) -> ServerSettings:
    """A replica's server: the user's settings, loading `load` only (a model and the steps of
    its pipeline). Explicit mode is how a replica loads a subset; its model-control endpoints
    are not reachable through Ray (the front answers them)."""
    given = {k: v for k, v in values.items() if k not in ("model_control_mode", "strict_readiness")}
    try:
        return ServerSettings(
            **given,
            host="127.0.0.1",
            grpc_port=0,
            workers=1,
            model_control_mode="explicit",
            load_model=load,
        )
    except ValidationError as exc:
        raise RayServeSettingsError(_problems(exc)) from None


def front_settings(values: Mapping[str, Any]) -> ServerSettings:
    """The front's own server, which loads nothing: it answers the server-wide routes that need
    no model (metadata, liveness, unknown models) exactly as `modelport serve` does."""
    return replica_settings(values, ())


def _problems(exc: ValidationError) -> str:
    return "; ".join(str(error["msg"]).removeprefix("Value error, ") for error in exc.errors())


class ModelAppArgs(BaseModel):
    """`args` of `modelport.ray_serve:model_app` (one model's application)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    settings: dict[str, Any]
    model: str
    load: list[str] = []
    """What the replicas load: the model, then its pipeline's steps (default: the model)."""
    options: DeploymentOptions = DeploymentOptions()
    metrics_interval: float = Field(default=2.0, gt=0)


class FrontAppArgs(BaseModel):
    """`args` of `modelport.ray_serve:front_app` (the front application)."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any]
    models: list[str]
    options: DeploymentOptions = DeploymentOptions()
    metrics_interval: float = Field(default=2.0, gt=0)


Ingress = Literal["proxy", "haproxy"]


def ingress_environment(ingress: Ingress, work_dir: Path) -> dict[str, str]:
    """Environment variables for Ray's processes (and this one, before Ray is imported).

    `haproxy` turns on Ray's HAProxy ingress with direct ingress: HAProxy, a C load balancer
    that ray[serve] installs, takes the HTTP port and hands each request straight to a
    replica's own HTTP server (on the same host, ports 30000-31000), where Ray's Python proxy
    would relay it to the replica as actor calls. Its files go under `work_dir` rather than
    Ray's fixed /tmp/haproxy-serve, so two of these servers on one machine do not share them
    (HAProxy refuses a socket path over 97 bytes, and Ray adds a 56-character directory: keep
    `work_dir` short).
    """
    if ingress == "proxy":
        return {}
    base = work_dir
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
    }
