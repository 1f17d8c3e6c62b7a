"""A model repository on the local file system: REPO/NAME/[config.yaml] + REPO/NAME/N/ versions."""

from __future__ import annotations

import hashlib
import logging
import stat
from pathlib import Path

from modelport.core.config import MAX_CONFIG_BYTES, ModelConfig
from modelport.core.errors import ModelNotFound
from modelport.core.manager import ModelDefinition
from modelport.repository.config_file import parse_config
from modelport.repository.nesting import check_nesting
from modelport.repository.paths import VERSION_DIR, inside, is_model_name, model_dir
from modelport.repository.safe_yaml import check_bounded
from modelport.repository.triton_pbtxt import PbtxtError, parse_pbtxt, to_model_config

log = logging.getLogger("modelport.repository")

CONFIG_FILE = "config.yaml"
TRITON_CONFIG_FILE = "config.pbtxt"


class LocalRepository:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {root} is not a directory")

    def contains(self, path: Path) -> bool:
        return inside(self.root, path)

    def model_names(self) -> list[str]:
        names = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if not is_model_name(entry.name):
                log.warning("skipping %s: not a valid model name", entry.name)
                continue
            if not inside(self.root, entry):
                log.warning("skipping %s: it links outside the model repository", entry.name)
                continue
            names.append(entry.name)
        return names

    def read(self, name: str) -> ModelDefinition:
        directory = model_dir(self.root, name)
        if not directory.is_dir():
            raise ModelNotFound(f"unknown model '{name}'")
        versions = self._versions(directory)
        fingerprints = {number: fingerprint(path) for number, path in versions.items()}
        try:
            config = self._config(directory, name)
        except ValueError as exc:
            return ModelDefinition(name, ModelConfig(), versions, str(exc), fingerprints)
        if config.pipeline and not versions:
            # A pipeline has no files of its own; Triton wants an empty 1/, we do not.
            versions, fingerprints = {1: directory}, {1: fingerprint(directory)}
        return ModelDefinition(name, config, versions, None, fingerprints)

    def parse_config(self, text: str, name: str) -> ModelConfig:
        """A config a load request carries, in the same formats as config.yaml."""
        return parse_config(text, name, "the load request's config")

    def model_fingerprint(self, name: str) -> str:
        """A digest of everything in the model's directory that a load reads; "" if it is gone."""
        directory = model_dir(self.root, name)
        if not directory.is_dir():
            return ""
        return fingerprint(directory)

    def _versions(self, directory: Path) -> dict[int, Path]:
        versions = {}
        for entry in directory.iterdir():
            if not (VERSION_DIR.match(entry.name) and entry.is_dir()):
                continue
            if not inside(self.root, entry):
                log.warning("skipping %s: it links outside the model repository", entry)
                continue
            versions[int(entry.name)] = entry
        return versions

    def _config(self, directory: Path, name: str) -> ModelConfig:
        """The model's config; ValueError (the model's load error) for any file that cannot be
        read or used, so one bad model never keeps the others from loading."""
        try:
            return self._read_config(directory, name)
        except OSError as exc:
            what = Path(exc.filename).name if exc.filename else "the config"
            raise ValueError(f"cannot read {what}: {exc.strerror or exc}") from None
        except RecursionError:
            raise ValueError("the config nests too deeply to be read") from None

    def _read_config(self, directory: Path, name: str) -> ModelConfig:
        path = directory / CONFIG_FILE
        triton = directory / TRITON_CONFIG_FILE
        if _present(path) and _present(triton):
            raise ValueError(f"both {CONFIG_FILE} and {TRITON_CONFIG_FILE} exist; keep one")
        if _present(triton):
            return self._triton_config(triton, name)
        if not _present(path):
            return ModelConfig(name=name)
        if not inside(self.root, path):
            raise ValueError(f"{CONFIG_FILE} links outside the model repository")
        _check_file(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{CONFIG_FILE} is not valid UTF-8: {exc}") from None
        check_bounded(text, what=CONFIG_FILE)  # depth, aliases: before PyYAML recurses
        return parse_config(text, name, CONFIG_FILE)

    def _triton_config(self, path: Path, name: str) -> ModelConfig:
        if not inside(self.root, path):
            raise ValueError(f"{TRITON_CONFIG_FILE} links outside the model repository")
        _check_file(path)
        try:
            fields = parse_pbtxt(path.read_text(encoding="utf-8"))
            check_nesting(fields, TRITON_CONFIG_FILE)
            config, ignored = to_model_config(fields, name)
        except (PbtxtError, UnicodeDecodeError) as exc:
            raise ValueError(f"invalid {TRITON_CONFIG_FILE}: {exc}") from None
        if config.name != name:
            raise ValueError(
                f"{TRITON_CONFIG_FILE} names the model '{config.name}' but its directory is "
                f"'{name}'"
            )
        if ignored:
            log.info("model %s: %s fields not used: %s", name, TRITON_CONFIG_FILE, ignored)
        return config


def _present(path: Path) -> bool:
    """A link to nothing is there too (and fails to read), not silently no config at all."""
    return path.exists() or path.is_symlink()


def _check_file(path: Path) -> None:
    """A regular file of at most MAX_CONFIG_BYTES (a directory or a FIFO is refused unread)."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path.name} is not a regular file")
    if info.st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path.name} is larger than {MAX_CONFIG_BYTES} bytes")


def fingerprint(directory: Path) -> str:
    """Names, sizes and modification times of every file under directory, as one digest.

    A version directory still being written changes it from one look to the next, which is
    how the poller tells a half-copied version from a finished one.
    """
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(directory.rglob("*")):
        try:
            stat = path.stat()
        except OSError:  # removed while we looked: the next look sees the difference
            continue
        relative = path.relative_to(directory).as_posix()
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
