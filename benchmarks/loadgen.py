"""Load generators for the benchmarks: perf_analyzer and wrk runs, bounded in time, as Points.

Both are installed by ``setup_loadgen.sh`` (run automatically when either is missing).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, TaskID

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"
SETUP_LOADGEN = BENCH_DIR / "setup_loadgen.sh"

# (load generator, tensor format) in the order they are measured and shown.
LOADERS: tuple[tuple[str, str], ...] = (
    ("perf_analyzer", "binary"),
    ("perf_analyzer", "json"),
    ("wrk", "json"),
)

console = Console(log_path=False)
if not console.is_terminal:  # logs and CI: wide enough for the table, no wrapping
    console = Console(log_path=False, width=120)


class BenchmarkError(RuntimeError):
    """A step of the benchmark failed; the message says which and why."""


@dataclass
class Point:
    """One measured configuration."""

    loader: str  # perf_analyzer | wrk | onnxruntime
    fmt: str  # binary | json | in-process
    concurrency: int
    inf_per_s: float
    p50_ms: float
    p99_ms: float
    label: str = ""  # ceiling configuration, e.g. "1 thread"
    requests: int | None = None
    errors: int = 0
    ratio: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def tool_version(cmd: Sequence[str], pattern: str) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


@dataclass
class Tools:
    perf_analyzer: Path
    perf_ld_library_path: str
    wrk: Path


def find_tools(perf_analyzer: str | None) -> Tools:
    """perf_analyzer and wrk; runs setup_loadgen.sh (idempotent) when either is missing."""
    loadgen_dir = Path(os.environ.get("LOADGEN_DIR", Path.home() / ".cache/modelport-loadgen"))
    pa = Path(perf_analyzer) if perf_analyzer else loadgen_dir / "perf_analyzer"
    wrk = shutil.which("wrk")
    ld = ""
    if not (pa.is_file() and os.access(pa, os.X_OK)) or wrk is None:
        console.log(
            f"running {SETUP_LOADGEN.relative_to(REPO_ROOT)} to install the load generators"
        )
        out = subprocess.run(
            ["bash", str(SETUP_LOADGEN)], capture_output=True, text=True, timeout=900
        )
        if out.returncode != 0:
            raise BenchmarkError(
                f"setup_loadgen.sh failed ({out.returncode}):\n{out.stderr[-2000:]}"
            )
        values = dict(
            line.split("=", 1)
            for line in out.stdout.splitlines()
            if "=" in line and line[:1].isupper()
        )
        if not perf_analyzer:
            # The wrapper sets LD_LIBRARY_PATH; fall back to the binary plus the printed path.
            pa = loadgen_dir / "perf_analyzer"
            if not pa.is_file():
                pa = Path(values["PERF_ANALYZER"])
                ld = values.get("PERF_LD_LIBRARY_PATH", "")
        wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchmarkError("wrk not found on PATH after setup_loadgen.sh")
    if not pa.is_file():
        raise BenchmarkError(f"perf_analyzer not found at {pa}")
    return Tools(perf_analyzer=pa, perf_ld_library_path=ld, wrk=Path(wrk))


def run_bounded(
    cmd: Sequence[str],
    *,
    log: Path,
    expected_s: float,
    timeout_s: float,
    progress: Progress,
    task: TaskID,
    env: dict[str, str] | None = None,
) -> tuple[int, str]:
    """Run cmd with stdout+stderr to log, advancing task with time; kill it after timeout_s."""
    with log.open("w") as out:
        out.write(f"$ {shlex.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env)
        t0 = time.monotonic()
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - t0
                progress.update(task, completed=min(elapsed, expected_s))
                if elapsed > timeout_s:
                    proc.kill()
                    proc.wait()
                    raise BenchmarkError(
                        f"{Path(cmd[0]).name} ran past {timeout_s:.0f} s and was killed (log {log})"
                    )
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        progress.update(task, completed=expected_s)
    return int(proc.returncode), log.read_text()


def perf_analyzer_point(
    tools: Tools,
    port: int,
    fmt: str,
    concurrency: int,
    seconds: float,
    *,
    model: str,
    host: str,
    log: Path,
    progress: Progress,
    task: TaskID,
) -> Point:
    csv = log.with_suffix(".csv")
    csv.unlink(missing_ok=True)
    window_ms = max(100, int(seconds * 1000 / 3))
    cmd = [
        str(tools.perf_analyzer),
        "-m",
        model,
        "-u",
        f"{host}:{port}",
        "-i",
        "http",
        "-b",
        "1",
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "--measurement-interval",
        str(window_ms),
        "-s",
        "999",
        "-r",
        "3",
        "--input-tensor-format",
        fmt,
        "--output-tensor-format",
        fmt,
        "-f",
        str(csv),
    ]
    env = dict(os.environ)
    if tools.perf_ld_library_path:
        env["LD_LIBRARY_PATH"] = ":".join(
            p for p in (tools.perf_ld_library_path, env.get("LD_LIBRARY_PATH", "")) if p
        )
    rc, text = run_bounded(
        cmd,
        log=log,
        expected_s=seconds,
        timeout_s=seconds * 4 + 60,
        progress=progress,
        task=task,
        env=env,
    )
    if rc != 0 or not csv.is_file():
        raise BenchmarkError(
            f"perf_analyzer ({fmt}, concurrency {concurrency}) exited {rc}; output:\n{text[-3000:]}"
        )
    header, values = csv.read_text().splitlines()[:2]
    row = dict(zip(header.split(","), values.split(","), strict=True))
    count = re.findall(r"Request count: (\d+)", text)
    return Point(
        loader="perf_analyzer",
        fmt=fmt,
        concurrency=concurrency,
        inf_per_s=float(row["Inferences/Second"]),
        p50_ms=float(row["p50 latency"]) / 1e3,
        p99_ms=float(row["p99 latency"]) / 1e3,
        requests=int(count[-1]) if count else None,
        raw={"csv": row, "command": shlex.join(cmd)},
    )


def wrk_point(
    tools: Tools,
    url: str,
    body_file: Path,
    concurrency: int,
    seconds: float,
    *,
    log: Path,
    progress: Progress,
    task: TaskID,
) -> Point:
    duration = max(1, round(seconds))  # wrk takes whole seconds
    cmd = [
        str(tools.wrk),
        f"-t{min(2, concurrency)}",
        f"-c{concurrency}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        url,
    ]
    env = dict(os.environ, BODY_FILE=str(body_file))
    rc, text = run_bounded(
        cmd,
        log=log,
        expected_s=duration,
        timeout_s=duration + 30,
        progress=progress,
        task=task,
        env=env,
    )
    lines = [ln for ln in text.splitlines() if ln.startswith("WRK_RESULT ")]
    if rc != 0 or not lines:
        raise BenchmarkError(
            f"wrk (concurrency {concurrency}) exited {rc}; output:\n{text[-3000:]}"
        )
    r: dict[str, Any] = json.loads(lines[-1].removeprefix("WRK_RESULT "))
    errors = sum(int(v) for k, v in r.items() if k.startswith("err_"))
    return Point(
        loader="wrk",
        fmt="json",
        concurrency=concurrency,
        inf_per_s=r["requests"] / (r["duration_us"] / 1e6),
        p50_ms=r["p50_us"] / 1e3,
        p99_ms=r["p99_us"] / 1e3,
        requests=int(r["requests"]),
        errors=errors,
        raw={"wrk": r, "command": shlex.join(cmd)},
    )
