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

Changing the file (`update_key_file`, what `modelport keys add|revoke` use) reads, changes and
writes it under an exclusive lock on a sidecar file, `.NAME.lock` beside it, so two commands
at once lose nothing; the write replaces the file atomically, keeps its owner and mode, and
goes through a symlink to the file it names.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelport.core.config import RateLimitConfig

KEY_PREFIX = "mp_"
ENV_KEY_NAME = "MODELPORT_API_KEY"
"""The name the key from the MODELPORT_API_KEY variable has in logs and metrics."""
MAX_KEY_FILE_BYTES = 1 << 20
LOCK_WAIT_SECS = 30.0
"""How long a change waits for another command's lock on the file before it gives up."""
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
    except RecursionError:
        raise KeyFileError(f"the key file {path} nests its values too deeply") from None
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


def key_file_target(path: Path) -> Path:
    """The file a write replaces: what a symlink (or a chain of them) names, else `path`."""
    return Path(os.path.realpath(path))


def update_key_file(path: Path, change: Callable[[list[KeyEntry]], list[KeyEntry]]) -> None:
    """Read the key file (none yet: no keys), apply `change` and write the result, all under
    the file's exclusive lock; whatever `change` raises leaves the file as it was."""
    with _locked(path):
        entries = read_key_file(path) if path.exists() else []
        write_key_file(path, change(entries))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """flock on `.NAME.lock` beside the file the path names. The lock file stays (removing it
    would let a second writer lock a file that a third no longer finds); it is empty and
    opened read-only, so whoever may change the key file can lock it, whoever made it first."""
    target = key_file_target(path)
    lock = target.with_name(f".{target.name}.lock")
    handle = os.open(lock, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECS
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise KeyFileError(
                        f"the key file {path} is locked by another command ({lock}) for more "
                        f"than {LOCK_WAIT_SECS:g} s"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(handle)  # releases the lock


def write_key_file(path: Path, entries: list[KeyEntry]) -> None:
    """Replace the key file atomically (a temporary file beside it, then os.replace): a server
    polling it sees the old file or the new one, never half of one. An existing file keeps its
    owner and mode; a new one is readable by its owner only. A symlink stays a symlink: the file
    it names is replaced. Raises KeyFileError when the owner cannot be kept (not root)."""
    document = {"keys": [entry.model_dump(mode="json", exclude_none=True) for entry in entries]}
    text = yaml.safe_dump(document, sort_keys=False)
    target = key_file_target(path)
    try:
        before: os.stat_result | None = target.stat()
    except FileNotFoundError:
        before = None
    # mkstemp creates the file with mode 0600, so the hashes are never readable by others
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(handle, "w") as sink:
            if before is not None:
                _keep_owner_and_mode(sink.fileno(), before, target)
            sink.write(text)
            sink.flush()
            os.fsync(sink.fileno())
        temporary.replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a crash too
        directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _keep_owner_and_mode(handle: int, before: os.stat_result, target: Path) -> None:
    made = os.fstat(handle)
    uid = before.st_uid if before.st_uid != made.st_uid else -1
    gid = before.st_gid if before.st_gid != made.st_gid else -1
    if uid != -1 or gid != -1:
        try:
            os.fchown(handle, uid, gid)
        except PermissionError:
            raise KeyFileError(
                f"cannot keep the owner of {target} (uid {before.st_uid}, gid "
                f"{before.st_gid}): run this as that user or as root"
            ) from None
    os.fchmod(handle, stat.S_IMODE(before.st_mode))


def _problems(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
