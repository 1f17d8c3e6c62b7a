"""The operator's commands: deploy, promote, rollback, models.

They change the model repository on disk (atomically, see repository/publish.py). A server in
poll mode picks the change up by itself; with --url, a server in explicit mode is asked to load
the model again through its API.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from modelport.core.manager import STABLE, served_versions
from modelport.repository import publish as repo_publish
from modelport.repository.local import LocalRepository

F = TypeVar("F", bound=Callable[..., Any])
API_KEY_VARIABLE = "MODELPORT_API_KEY"


def repository_option(*, required: bool) -> Callable[[F], F]:
    return click.option(
        "--model-repository",
        "repository",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="MODELPORT_MODEL_REPOSITORY",
        required=required,
        default=None,
        help="The model repository (or MODELPORT_MODEL_REPOSITORY).",
    )


REPOSITORY = repository_option(required=True)
URL = click.option(
    "--url",
    default=None,
    help="A running server (http://HOST:PORT) to tell about the change (explicit mode).",
)


class ServerClient:
    """The few v2 repository calls the CLI makes; stdlib only, so the CLI needs no extra."""

    def __init__(self, url: str, timeout: float = 120.0) -> None:
        self.base = url.rstrip("/")
        if "://" not in self.base:
            self.base = f"http://{self.base}"
        self.timeout = timeout

    @staticmethod
    def headers() -> dict[str, str]:
        """With MODELPORT_API_KEY set, requests carry it (the server needs the management
        scope); it is read from the environment, never from a flag that `ps` would show."""
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(API_KEY_VARIABLE)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def post(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=self.headers())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                return reply.status, json.loads(reply.read() or b"{}")
        except urllib.error.HTTPError as error:
            payload = error.read()
            try:
                return error.code, json.loads(payload)
            except ValueError:
                return error.code, {"error": payload.decode(errors="replace")}
        except urllib.error.URLError as error:
            raise click.ClickException(f"cannot reach {self.base}: {error.reason}") from None


def _tell_server(url: str | None, name: str) -> None:
    if url is None:
        return
    status, reply = ServerClient(url).post(f"/v2/repository/models/{name}/load")
    if status == 200:
        click.echo(f"the server at {url} reloaded {name}")
    elif "model control mode is 'poll'" in str(reply.get("error", "")):
        click.echo(f"the server at {url} polls the repository: it picks the change up itself")
    else:
        raise click.ClickException(f"the server refused to load {name}: {reply.get('error')}")


@click.command()
@click.argument("model_file", type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True, help="Model name (its directory in the repository).")
@click.option("--version", type=int, default=None, help="Version number (default: next free).")
@click.option("--label", default=None, help="Label the new version (e.g. canary).")
@click.option(
    "--traffic",
    type=click.FloatRange(0, 100),
    default=None,
    help="Percent of unversioned requests for the new version; the rest stay on stable.",
)
@REPOSITORY
@URL
def deploy(
    model_file: Path,
    name: str,
    version: int | None,
    label: str | None,
    traffic: float | None,
    repository: Path,
    url: str | None,
) -> None:
    """Publish MODEL_FILE as a new version of a model, atomically."""
    try:
        done = repo_publish.publish(
            repository, name, model_file, version=version, label=label, traffic=traffic
        )
    except repo_publish.PublishError as exc:
        raise click.ClickException(str(exc)) from None
    extra = f" labelled {label}" if label else ""
    click.echo(f"published {name} version {done.version}{extra} at {done.path}")
    _tell_server(url, name)


@click.command()
@click.argument("name")
@click.argument("version", type=int)
@click.option("--label", default=STABLE, show_default=True, help="The label to move.")
@REPOSITORY
@URL
def promote(name: str, version: int, label: str, repository: Path, url: str | None) -> None:
    """Point a label (default: stable) at VERSION of model NAME."""
    try:
        repo_publish.set_label(repository, name, version, label)
    except repo_publish.PublishError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{name}: {label} -> version {version}")
    _tell_server(url, name)


@click.command()
@click.argument("name")
@click.option("--to", "to", type=int, default=None, help="Version to go back to.")
@REPOSITORY
@URL
def rollback(name: str, to: int | None, repository: Path, url: str | None) -> None:
    """Serve an earlier version of NAME again (default: the one before the newest)."""
    try:
        target, retired = repo_publish.rollback(repository, name, to)
    except repo_publish.PublishError as exc:
        raise click.ClickException(str(exc)) from None
    moved = ", ".join(str(v) for v in retired) or "none"
    click.echo(f"{name}: stable -> version {target}; versions moved aside: {moved}")
    if retired:
        click.echo(f"  (undo: rename {name}/.retired-N-* back to {name}/N)")
    _tell_server(url, name)


@click.command()
@repository_option(required=False)
@click.option("--url", default=None, help="Ask a running server (http://HOST:PORT).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(repository: Path | None, url: str | None, as_json: bool) -> None:
    """A table of models, versions, states, labels and traffic."""
    if url is not None and repository is None:
        rows = _rows_from_server(url)
    elif repository is not None and url is None:
        rows = _rows_from_disk(repository)
    else:
        raise click.UsageError("give one of --model-repository or --url")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"models at {url or repository}")
    for column in ("model", "version", "state", "labels", "traffic %", "reason"):
        table.add_column(column)
    for row in rows:
        traffic = row.get("traffic")
        table.add_row(
            row["name"],
            row.get("version", "-"),
            row["state"],
            ", ".join(row.get("labels", [])),
            "" if traffic is None else f"{traffic:g}",
            row.get("reason", ""),
        )
    Console(width=140).print(table)


def _rows_from_server(url: str) -> list[dict[str, Any]]:
    status, rows = ServerClient(url).post("/v2/repository/index")
    if status != 200:
        raise click.ClickException(f"{url} answered {status}: {rows}")
    return list(rows)


def _rows_from_disk(repository: Path) -> list[dict[str, Any]]:
    """What a server would serve from this repository (states are ON DISK / NOT SERVED)."""
    try:
        source = LocalRepository(repository)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    rows: list[dict[str, Any]] = []
    for name in source.model_names():
        definition = source.read(name)
        if definition.error:
            rows.append({"name": name, "state": "INVALID", "reason": definition.error})
            continue
        config = definition.config
        served = set(served_versions(config, list(definition.versions)))
        for version in sorted(definition.versions):
            row = {
                "name": name,
                "version": str(version),
                "state": "SERVED" if version in served else "NOT SERVED",
            }
            rows.append(row | config.routing(version))
    return rows
