"""`modelport` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from modelport.__about__ import __version__
from modelport.cli import operate
from modelport.cli import optimize as optimize_commands
from modelport.cli.alerts import alerts as alert_commands
from modelport.cli.build import build as build_command
from modelport.cli.k8s import k8s as k8s_command
from modelport.cli.keys import keys as key_commands
from modelport.cli.queue import queue as queue_commands
from modelport.cli.ray_serve import ray as ray_commands


@click.group()
@click.version_option(__version__, prog_name="modelport")
def cli() -> None:
    """Optimize, deploy and serve machine-learning models."""


@cli.command()
@click.option(
    "--model-repository",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Directory of models (NAME/VERSION/model.onnx). Default: the bundled examples.",
)
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--http-port", type=int, default=None, help="v2 REST port (default 8000).")
@click.option("--grpc-port", type=int, default=None, help="v2 gRPC port (default 8001).")
@click.option(
    "--max-request-size",
    "max_request_bytes",
    type=int,
    default=None,
    help="Largest request body in bytes (default 64 MiB); larger ones get 413.",
)
@click.option(
    "--max-tensor-elements",
    type=int,
    default=None,
    help="Largest element count of one input tensor (default 2**26).",
)
@click.option(
    "--strict-readiness/--no-strict-readiness",
    default=None,
    help="Report not ready while any model failed to load.",
)
@click.option(
    "--model-control-mode",
    type=click.Choice(["none", "poll", "explicit"]),
    default=None,
    help="none: load the repository once (default); poll: follow changes on disk; "
    "explicit: load and unload only through the API.",
)
@click.option(
    "--repository-poll-secs",
    type=float,
    default=None,
    help="Seconds between looks at the repository in poll mode (default 5).",
)
@click.option(
    "--load-model",
    "load_model",
    multiple=True,
    help="In explicit mode, a model to load at start (repeatable; '*' loads all).",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Server processes sharing the ports, each with its own copy of the models (default 1). "
    "More help models that are cheap to run; see the README.",
)
@click.option(
    "--queue",
    "queue",
    multiple=True,
    help="Also serve requests from a message queue: redis://, amqp:// or nats:// URL "
    "(repeatable; query parameters such as ?requests=NAME&model=NAME override the defaults; "
    "see the README).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PEM certificate (chain): both ports serve TLS 1.2+ only. Needs --tls-key. "
    "SIGHUP reloads the files.",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PEM private key of --tls-cert (unencrypted).",
)
@click.option(
    "--tls-client-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PEM CA certificates: clients must present a certificate signed by one (mTLS).",
)
@click.option(
    "--api-keys",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="API key file (or MODELPORT_API_KEYS; `modelport keys add` writes it): requests need "
    "'Authorization: Bearer KEY'. Read again when it changes. MODELPORT_API_KEY=KEY alone "
    "is one key with every scope.",
)
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    default=None,
    help="Serve a non-loopback --host without API keys (refused otherwise).",
)
@click.option(
    "--protect-health/--no-protect-health",
    default=None,
    help="Health endpoints need a key too (default: open, for probes).",
)
@click.option(
    "--alert-webhook",
    "alert_webhook",
    multiple=True,
    help="POST firing and resolved SLO alerts to this URL in Alertmanager's webhook format "
    "(repeatable; or MODELPORT_ALERT_WEBHOOK, comma-separated).",
)
@click.option(
    "--slo-interval",
    type=float,
    default=None,
    hidden=True,  # advanced: tests and short SLO windows
    help="Seconds between SLO evaluations (default 5).",
)
@click.option(
    "--max-connections",
    type=int,
    default=None,
    help="Open connections per port; more are refused politely (default: an equal share of "
    "the descriptor limit, at most 10000).",
)
@click.option(
    "--max-pending-bytes",
    type=int,
    default=None,
    help="Bytes of requests still arriving, over all connections of both ports; past it new "
    "ones get 503 / UNAVAILABLE (default 4x --max-request-size, at least 256 MiB).",
)
@click.option(
    "--header-timeout",
    type=float,
    default=None,
    help="Seconds a client has to send a request's headers, or TLS handshake and HTTP/2 "
    "preface (default 10).",
)
@click.option(
    "--stall-timeout",
    type=float,
    default=None,
    help="Seconds a request body, HTTP/2 frame or gRPC message may stall half sent (default 10).",
)
@click.option(
    "--idle-timeout",
    type=float,
    default=None,
    help="Seconds a gRPC connection may stay open with no call in progress (default 300).",
)
@click.option(
    "--log-level",
    default=None,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="json: one JSON object per log line, with each record's fields (default text).",
)
@click.option(
    "--access-log/--no-access-log",
    default=None,
    help="One line per request on the modelport.access logger (default on).",
)
@click.option(
    "--trace-sample-ratio",
    type=float,
    default=None,
    help="Share of requests traced with OpenTelemetry, 0 to 1 (default 0: off). A request "
    "whose traceparent is sampled is always traced. Needs pip install 'modelport[tracing]'.",
)
@click.option(
    "--otlp-endpoint",
    default=None,
    help="Where traces go, over OTLP/HTTP (e.g. http://collector:4318/v1/traces; default: "
    "the OTEL_EXPORTER_OTLP_* variables, else http://localhost:4318/v1/traces).",
)
def serve(**options: object) -> None:
    """Serve a model repository over the v2 protocol."""
    from pydantic import ValidationError

    from modelport.observability.logging import configure
    from modelport.security.tls import TlsError
    from modelport.serving import serve as run
    from modelport.settings import ServerSettings

    # click's values, as the options above typed them; ServerSettings validates each one
    given: dict[str, Any] = {k: v for k, v in options.items() if v is not None and v != ()}
    try:
        settings = ServerSettings(**given)
    except ValidationError as exc:
        problems = "; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())
        raise click.UsageError(problems) from None
    configure(settings.log_level, log_format=settings.log_format, access_log=settings.access_log)
    try:
        status = run(settings)
    except TlsError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(status)


for command in (
    operate.deploy,
    operate.promote,
    operate.rollback,
    operate.models,
    queue_commands,
    ray_commands,
    key_commands,
    alert_commands,
    *optimize_commands.COMMANDS,
    k8s_command,
    build_command,
):
    cli.add_command(command)


if __name__ == "__main__":
    cli()
