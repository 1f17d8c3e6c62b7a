"""What a benchmark ran on: CPU model, checkout state, package versions (for result headers)."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
from loadgen import REPO_ROOT

BENCH = Path(os.environ.get("BENCH", REPO_ROOT.parent / "shared" / "bench"))
"""The shared bench (its driver compare.py, models, peer servers)."""
PEERS = Path(os.environ.get("PEERS", Path.home() / ".cache" / "modelport-bench"))
"""Where the shared bench keeps its venvs, models and results."""
BENCH_PYTHON = PEERS / "venv-torch" / "bin" / "python"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
    ).stdout


def git_state() -> str:
    """Commit of the checkout, plus how many files under src/ differ from it."""
    try:
        head = _git("rev-parse", "--short", "HEAD").strip()
        dirty = _git("status", "--porcelain", "--", "src").splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    n = len(dirty)
    return f"{head} ({n} file{'' if n == 1 else 's'} under src/ modified)" if n else head


def versions() -> dict[str, str]:
    def v(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "unknown"

    return {"onnxruntime": ort.__version__, "modelport": v("modelport"), "numpy": np.__version__}
