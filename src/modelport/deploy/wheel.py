"""modelport itself as a wheel for an image, and the requirements that wheel declares.

The wheel is built from the project this modelport was installed from (a checkout installed
with `pip install -e .` or `pip install .`), so the image runs the code that was tested here,
not whatever a registry holds under the name. Installed from a wheel, there is no source to
build from: `modelport build --wheel FILE` takes that wheel instead.
"""

from __future__ import annotations

import email.message
import email.parser
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from urllib.parse import unquote, urlparse

from packaging.requirements import InvalidRequirement, Requirement

PROJECT = "modelport"


class PackagingError(Exception):
    """modelport cannot be put into the image; the message says why and what to do."""


def project_source() -> Path | None:
    """The project folder this modelport was installed from, if it was installed from one."""
    try:
        text = distribution(PROJECT).read_text("direct_url.json")
    except PackageNotFoundError:
        return None
    if not text:
        return None
    url = json.loads(text).get("url", "")
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return None
    source = Path(unquote(parsed.path))
    return source if (source / "pyproject.toml").is_file() else None


def build_wheel(source: Path, out_dir: Path, timeout: float = 600) -> Path:
    """`pip wheel --no-deps` of the project in `source`, into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out_dir)]
    try:
        done = subprocess.run(
            [*command, str(source)], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        message = f"building modelport's wheel from {source} took over {timeout:.0f}s"
        raise PackagingError(message) from None
    if done.returncode != 0:
        raise PackagingError(
            f"building modelport's wheel from {source} failed:\n{done.stderr.strip()[-2000:]}"
        )
    wheels = sorted(out_dir.glob(f"{PROJECT}-*.whl"))
    if len(wheels) != 1:
        raise PackagingError(f"expected one {PROJECT} wheel in {out_dir}, found {len(wheels)}")
    return wheels[0]


def copy_wheel(wheel: Path, out_dir: Path) -> Path:
    if not (wheel.name.startswith(f"{PROJECT}-") and wheel.suffix == ".whl"):
        raise PackagingError(f"{wheel} is not a {PROJECT} wheel ({PROJECT}-VERSION-....whl)")
    out_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(wheel, out_dir / wheel.name))


def _metadata(wheel: Path) -> email.message.Message:
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            if len(names) != 1:
                raise PackagingError(f"{wheel} has no single .dist-info/METADATA")
            text = archive.read(names[0]).decode("utf-8")
    except zipfile.BadZipFile:
        raise PackagingError(f"{wheel} is not a wheel (not a zip archive)") from None
    return email.parser.Parser().parsestr(text)


def wheel_version(wheel: Path) -> str:
    return str(_metadata(wheel)["Version"])


def wheel_requirements(wheel: Path, extras: Iterable[str]) -> list[str]:
    """What installing `modelport[EXTRAS]` from this wheel installs besides modelport itself,
    one requirement a line (markers other than `extra` evaluated for this Python, which is
    the image's: see image.py)."""
    metadata = _metadata(wheel)
    wanted = sorted(set(extras))
    offered = set(metadata.get_all("Provides-Extra") or ())
    unknown = [e for e in wanted if e not in offered]
    if unknown:
        raise PackagingError(
            f"modelport {metadata['Version']} has no extra {', '.join(unknown)} "
            f"(it has: {', '.join(sorted(offered))})"
        )
    lines: dict[str, str] = {}
    for text in metadata.get_all("Requires-Dist") or ():
        requirement = Requirement(text)
        if requirement.name == PROJECT or not _wanted(requirement, wanted):
            continue
        requirement.marker = None
        lines.setdefault(str(requirement), str(requirement))
    return list(lines)


def _wanted(requirement: Requirement, extras: list[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": e}) for e in ["", *extras])


def check_requirement(text: str) -> str:
    """A requirement given on the command line (--pip), as pip will read it."""
    try:
        return str(Requirement(text))
    except InvalidRequirement as exc:
        raise PackagingError(f"--pip {text!r} is not a requirement: {exc}") from None
