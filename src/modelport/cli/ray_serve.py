"""`modelport ray serve` and `modelport ray config`: a model repository on Ray Serve.

`serve` starts (or joins) Ray and deploys one Serve application per model plus the front
(ray_serve/plan.py), on Ray's HTTP proxy at --http-host:--http-port, until SIGINT/SIGTERM.
`config` writes the same applications as a Serve config file for `serve deploy` / `serve run`.
Ray is imported only once a command runs (the `ray` extra).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml

from modelport.ray_serve.options import (
    RayOptionsFile,
    RayServeSettingsError,
    check_settings,
    ingress_environment,
)
from modelport.ray_serve.plan import AppSpec, plan, serve_config
from modelport.security.exposure import open_server_refusal

NEEDS_RAY = "Ray Serve is not installed: pip install 'modelport[ray]'"


@click.group()
def ray() -> None:
    """Serve a model repository on Ray Serve."""


def _serving_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options `serve` and `config` share: the repository, Ray's and modelport's settings."""
    options = [
        click.option(
            "--model-repository",
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            required=True,
            help="Directory of models; every replica reads it (the same path on every node).",
        ),
        click.option(
            "--replicas",
            type=click.IntRange(1, 1024),
            default=None,
            help="Replicas of every model (default 1; --ray-options sets them per model).",
        ),
        click.option(
            "--ray-options",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="YAML: Ray's options (num_replicas, autoscaling_config, ray_actor_options, "
            "max_ongoing_requests) under `default`, `models: {NAME: ...}` and `front`.",
        ),
        click.option("--http-host", default="127.0.0.1", help="Ray's HTTP address."),
        click.option("--http-port", type=int, default=8000, help="Ray's HTTP port."),
        click.option(
            "--api-keys",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="API key file (as for modelport serve; every replica reads it). "
            "MODELPORT_API_KEY in the replicas' environment is one key with every scope.",
        ),
        click.option(
            "--allow-unauthenticated",
            is_flag=True,
            default=False,
            help="Serve a non-loopback --http-host without API keys (refused otherwise).",
        ),
        click.option(
            "--protect-health/--no-protect-health",
            default=None,
            help="Health endpoints need a key too.",
        ),
        click.option(
            "--max-request-size",
            "max_request_bytes",
            type=int,
            default=None,
            help="Largest request body in bytes (default 64 MiB).",
        ),
        click.option("--max-tensor-elements", type=int, default=None),
        click.option("--strict-readiness/--no-strict-readiness", default=None),
        click.option(
            "--log-level",
            type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
            default=None,
        ),
        click.option("--access-log/--no-access-log", default=None),
        click.option(
            "--metrics-interval",
            type=click.FloatRange(0.1, 60),
            default=2.0,
            hidden=True,  # tests: how often replicas send their metrics to the front
        ),
    ]
    return functools.reduce(lambda wrapped, option: option(wrapped), reversed(options), command)


@ray.command("serve")
@_serving_options
@click.option(
    "--address",
    default=None,
    help="Join this running Ray ('auto', or HOST:PORT) instead of starting a local one.",
)
@click.option(
    "--num-cpus",
    type=click.IntRange(1, 4096),
    default=None,
    help="CPUs of the local Ray this starts (default: the machine's).",
)
@click.option(
    "--ingress",
    type=click.Choice(["proxy", "haproxy"]),
    default="proxy",
    help="proxy: Ray's HTTP proxy; haproxy: Ray's HAProxy ingress, which hands requests "
    "straight to the replicas (a local Ray only; see the README).",
)
def serve(**options: Any) -> None:
    """Serve a model repository on Ray Serve: one application per model, plus a front."""
    if importlib.util.find_spec("ray") is None:
        raise click.ClickException(NEEDS_RAY)
    address, num_cpus, ingress = (
        options.pop("address"),
        options.pop("num_cpus"),
        options.pop("ingress"),
    )
    host, port = options["http_host"], options["http_port"]
    apps = _plan(options)
    if address is not None and ingress != "proxy":
        raise click.UsageError(
            "--ingress haproxy applies to a Ray this command starts, not --address"
        )
    from modelport.observability.logging import configure

    configure(str(options.get("log_level") or "info"))
    work = Path(tempfile.mkdtemp(prefix="mpray-", dir="/tmp" if Path("/tmp").is_dir() else None))
    try:
        # before Ray is imported: its modules read these switches at import
        os.environ.update(ingress_environment(ingress, work))
        from modelport.ray_serve.cluster import ClusterOptions, serve_until_stopped

        serve_until_stopped(apps, host, port, ClusterOptions(address, num_cpus, ingress))
    finally:
        shutil.rmtree(work, ignore_errors=True)


@ray.command("config")
@_serving_options
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the Serve config file here (default: standard output).",
)
def config(**options: Any) -> None:
    """Write a Serve config file (for `serve deploy` or `serve run`) of the same applications."""
    output = options.pop("output")
    host, port = options["http_host"], options["http_port"]
    apps = _plan(options)
    text = yaml.safe_dump(serve_config(apps, host, port), sort_keys=False)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output} ({len(apps) - 1} model application(s) and the front)")


def _plan(options: dict[str, Any]) -> list[AppSpec]:
    host = options.pop("http_host")
    options.pop("http_port")
    replicas = options.pop("replicas")
    interval = options.pop("metrics_interval")
    options_file = options.pop("ray_options")
    keys = options.get("api_keys") is not None or bool(os.environ.get("MODELPORT_API_KEY"))
    if not keys and not options.get("allow_unauthenticated"):
        refusal = open_server_refusal(host)
        if refusal is not None:
            raise click.UsageError(refusal)
    settings = {name: value for name, value in options.items() if value is not None}
    for name in ("model_repository", "api_keys"):  # replicas do not run in this directory
        if name in settings:
            settings[name] = Path(settings[name]).resolve()
    if not settings.get("allow_unauthenticated"):
        settings.pop("allow_unauthenticated", None)
    try:
        ray_options = RayOptionsFile.read(options_file) if options_file else RayOptionsFile()
        return plan(check_settings(settings), ray_options, replicas, interval)
    except RayServeSettingsError as exc:
        raise click.UsageError(str(exc)) from None
