"""`modelport keys add|list|revoke`: the API key file a server reads (security/keys.py).

The file holds hashes only. `add` prints the new key on stdout, and nothing else, once: it
cannot be shown again. A running server reads the file again within about a second. `add` and
`revoke` change the file under its lock (security/keys.update_key_file): commands run at once
lose no entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from modelport.core.config import RateLimitConfig
from modelport.security.keys import (
    SCOPE_NAMES,
    KeyEntry,
    KeyFileError,
    generate_key,
    key_digest,
    read_key_file,
    update_key_file,
)

KEY_FILE = click.option(
    "--api-keys",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="MODELPORT_API_KEYS",
    required=True,
    help="The API key file (or MODELPORT_API_KEYS).",
)


@click.group()
def keys() -> None:
    """API keys for `modelport serve --api-keys FILE`."""


@keys.command()
@click.argument("name")
@KEY_FILE
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(SCOPE_NAMES),
    help="What the key may do (repeatable; default: inference).",
)
@click.option(
    "--models",
    "models",
    multiple=True,
    help="Model names the key may use, as fnmatch patterns such as 'fraud-*' "
    "(repeatable; default: every model).",
)
@click.option(
    "--rate-limit",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Inference requests per second this key may make.",
)
@click.option(
    "--burst",
    type=click.IntRange(min=1),
    default=None,
    help="Requests the key may make at once above --rate-limit (default: one second's worth).",
)
def add(
    name: str,
    key_file: Path,
    scopes: tuple[str, ...],
    models: tuple[str, ...],
    rate_limit: float | None,
    burst: int | None,
) -> None:
    """Add a key named NAME and print it (only on stdout, only now)."""
    if burst is not None and rate_limit is None:
        raise click.UsageError("--burst needs --rate-limit")
    key = generate_key()
    try:
        entry = KeyEntry(
            name=name,
            sha256=key_digest(key),
            scopes=scopes or ("inference",),  # type: ignore[arg-type]  # click.Choice checked them
            models=models or None,
            rate_limit=_rate_limit(rate_limit, burst),
        )
    except ValidationError as exc:
        problems = "; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())
        raise click.UsageError(problems) from None

    def with_new_key(entries: list[KeyEntry]) -> list[KeyEntry]:
        if any(known.name == name for known in entries):
            raise click.ClickException(
                f"{key_file} has a key named {name!r} already; revoke it first to replace it"
            )
        return [*entries, entry]

    _update(key_file, with_new_key)
    click.echo(f"added the key {name!r} to {key_file}; it is shown this once:", err=True)
    click.echo(key)


@keys.command(name="list")
@KEY_FILE
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_keys(key_file: Path, as_json: bool) -> None:
    """The keys of the file: names, scopes, models and rate limits (never hashes)."""
    entries = _read(key_file)
    if as_json:
        click.echo(json.dumps([_row(entry) for entry in entries], indent=2))
        return
    table = Table(title=f"API keys in {key_file}")
    for column in ("name", "scopes", "models", "rate limit"):
        table.add_column(column)
    for entry in entries:
        limit = entry.rate_limit
        table.add_row(
            entry.name,
            ", ".join(entry.scopes),
            "every model" if entry.models is None else ", ".join(entry.models),
            "-" if limit is None else f"{limit.requests_per_second:g}/s, burst {limit.burst}",
        )
    Console(width=140).print(table)


@keys.command()
@click.argument("name")
@KEY_FILE
def revoke(name: str, key_file: Path) -> None:
    """Remove the key NAME: a running server refuses it within about a second."""
    if not key_file.exists():
        _read(key_file)  # the error naming the missing file; revoking does not create one

    def without_key(entries: list[KeyEntry]) -> list[KeyEntry]:
        kept = [entry for entry in entries if entry.name != name]
        if len(kept) == len(entries):
            raise click.ClickException(f"{key_file} has no key named {name!r}")
        return kept

    _update(key_file, without_key)
    click.echo(f"revoked the key {name!r} in {key_file}")


def _rate_limit(rate: float | None, burst: int | None) -> RateLimitConfig | None:
    """The entry stores its burst, defaulted as config.yaml defaults it."""
    if rate is None:
        return None
    given = RateLimitConfig(requests_per_second=rate, burst=burst)
    return RateLimitConfig(requests_per_second=rate, burst=given.limit().burst)


def _row(entry: KeyEntry) -> dict[str, object]:
    limit = entry.rate_limit
    return {
        "name": entry.name,
        "scopes": list(entry.scopes),
        "models": None if entry.models is None else list(entry.models),
        "rate_limit": None if limit is None else limit.model_dump(),
    }


def _read(key_file: Path) -> list[KeyEntry]:
    try:
        return read_key_file(key_file)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None


def _update(key_file: Path, change: Callable[[list[KeyEntry]], list[KeyEntry]]) -> None:
    try:
        update_key_file(key_file, change)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {key_file}: {exc.strerror or exc}") from None
