"""The API key file: named keys, each stored as the SHA-256 of the key, never the key itself.

```yaml
keys:
  - name: ci
    sha256: 9f86d08...            # hex SHA-256 of the key
    scopes: [inference]           # inference | management | metrics
    models: ["fraud-*"]           # optional fnmatch patterns; absent = every model
    rate_limit: {requests_per_second: 50, burst: 100}   # optional, per key
```

Why a plain SHA-256 and not a slow password hash (bcrypt, scrypt, argon2): the keys are 256-bit
random tokens made by `generate_key`, not passwords a person chose, so there is nothing for a
slow hash to protect against (no dictionary, no brute force over 2**256), and a slow hash on
every request would cost far more than the 3 % of throughput a key check may take.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelport.core.config import RateLimitConfig

KEY_PREFIX = "mp_"
ENV_KEY_NAME = "MODELPORT_API_KEY"
"""The name the key from the MODELPORT_API_KEY variable has in logs and metrics."""
MAX_KEY_FILE_BYTES = 1 << 20
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ScopeName = Literal["inference", "management", "metrics"]
SCOPE_NAMES: tuple[ScopeName, ...] = ("inference", "management", "metrics")

FileStamp = tuple[int, int, int]
"""(mtime_ns, size, inode): a changed key file changes at least one of them."""


class KeyFileError(Exception):
    """A key file that cannot be read or is not valid; the message names the file and entry."""


class KeyEntry(BaseModel):
    """One key of the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    scopes: tuple[ScopeName, ...] = Field(min_length=1)
    models: tuple[str, ...] | None = None
    """fnmatch patterns of the model names the key may use; None: every model."""
    rate_limit: RateLimitConfig | None = None
    """The same shape as a model's config.yaml `rate_limit`."""

    @field_validator("name")
    @classmethod
    def _usable_name(cls, name: str) -> str:
        if not NAME.fullmatch(name):
            raise ValueError(
                f"name {name!r} must be 1-64 letters, digits, '_', '.' or '-' (starting with a "
                "letter or digit): it appears in logs and metrics"
            )
        if name == ENV_KEY_NAME:
            raise ValueError(f"the name {ENV_KEY_NAME} is reserved for that variable's key")
        return name

    @field_validator("sha256")
    @classmethod
    def _lower_hex(cls, digest: str) -> str:
        return digest.lower()

    @field_validator("models")
    @classmethod
    def _patterns(cls, models: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if models is not None and (not models or not all(models)):
            raise ValueError("models must list non-empty patterns (leave it out for every model)")
        return models


class _KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[dict[str, Any]] = Field(default_factory=list)


def generate_key() -> str:
    """A new API key: 256 random bits, URL-safe, with a prefix that secret scanners can spot."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str | bytes) -> str:
    """The hex SHA-256 stored for a key."""
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


def file_stamp(path: Path) -> FileStamp | None:
    """What tells a changed file from the one read last; None when it cannot be seen."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def read_key_file(path: Path) -> list[KeyEntry]:
    """The keys of a key file; raises KeyFileError naming the file and the entry at fault."""
    try:
        with path.open("rb") as source:
            text = source.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    if len(text) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"the key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # PyYAML's own text quotes the offending line, which may hold a hash or a pasted key
        problem = getattr(exc, "problem", None) or "a syntax error"
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise KeyFileError(f"the key file {path} is not valid YAML: {problem}{where}") from None
    if document is None:
        return []
    try:
        listed = _KeyFile.model_validate(document).keys
    except ValidationError as exc:
        raise KeyFileError(f"the key file {path}: {_problems(exc)}") from None
    entries: list[KeyEntry] = []
    for number, item in enumerate(listed, start=1):
        named = item.get("name")
        where = f"entry {number}" + (f" ({named!r})" if isinstance(named, str) else "")
        try:
            entry = KeyEntry.model_validate(item)
        except ValidationError as exc:
            raise KeyFileError(f"the key file {path}, {where}: {_problems(exc)}") from None
        if any(known.name == entry.name for known in entries):
            raise KeyFileError(f"the key file {path}, {where}: the name is used twice")
        entries.append(entry)
    return entries


def write_key_file(path: Path, entries: list[KeyEntry]) -> None:
    """Replace the key file atomically (a temporary file, then os.replace), readable by its
    owner only: a server polling it sees the old file or the new one, never half of one."""
    document = {"keys": [entry.model_dump(mode="json", exclude_none=True) for entry in entries]}
    text = yaml.safe_dump(document, sort_keys=False)
    # mkstemp creates the file with mode 0600, so the hashes are never readable by others
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(handle, "w") as sink:
            sink.write(text)
            sink.flush()
            os.fsync(sink.fileno())
        temporary.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _problems(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
