"""HTTP serving benchmark: modelport v2 REST vs the in-process onnxruntime ceiling.

One run does, in order:

1. builds the MLP 64->256->256->10 (FP32, ``onnx_models.mlp``) into a temporary model repository
   under ``benchmarks/.work/``;
2. measures the in-process ceiling: ``session.run`` in a loop on one sample (batch 1), once with
   one intra-op thread and once with onnxruntime's default session options;
3. starts ``modelport serve`` on two free ports of 127.0.0.1, waits until it is ready and checks
   one answer against in-process onnxruntime (exits non-zero when the numbers differ);
4. drives it, batch 1 per request, at each concurrency (default 1 and 16) with
   perf_analyzer (HTTP, binary tensors), perf_analyzer (HTTP, JSON tensors) and wrk (a fixed JSON
   v2 infer body holding one [1, 64] sample); checks the answer again after the load;
5. stops the server by its PID (also on errors and Ctrl-C), prints a table and writes
   ``benchmarks/results/serving_http-<date>.{md,json,png}``.

Method (the same as the shared bench harness): every point is preceded by a short warm-up of the
same load generator. perf_analyzer runs three measurement windows of seconds/3 each with the
stability check effectively off (``-s 999 -r 3``) and reports the merged windows; wrk runs for the
whole duration with min(2, concurrency) threads and ``concurrency`` connections. Throughput is
inferences/s (one inference per request), latencies are per request, in milliseconds. The ceiling
loop times every ``session.run`` call.

Load generators come from ``benchmarks/setup_loadgen.sh`` (run automatically when missing).

    .venv/bin/python benchmarks/serving_http.py                  # defaults: 5 s per point
    .venv/bin/python benchmarks/serving_http.py --seconds 2 --warmup 0.5 --concurrency 1,4,16
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / ".work"
RESULTS_DIR = BENCH_DIR / "results"
WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"
SETUP_LOADGEN = BENCH_DIR / "setup_loadgen.sh"

MODEL_NAME = "mlp"
MODEL_SIZES = (64, 256, 256, 10)
MODEL_SEED = 0
INPUT_NAME = "input"
OUTPUT_NAME = "output"
HOST = "127.0.0.1"

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


# ----------------------------------------------------------------------------------------------
# results


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


@dataclass
class Meta:
    date: str
    started: str
    command: str
    machine: str
    cpu_model: str
    cores: int
    python: str
    onnxruntime: str
    modelport: str
    numpy: str
    perf_analyzer: str
    wrk: str
    seconds: float
    warmup: float
    concurrency: list[int]
    model: str
    git: str = "unknown"
    server_args: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def tool_version(cmd: Sequence[str], pattern: str) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


def git_state() -> str:
    """Commit of the checkout, plus how many files under src/ differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    n = len(dirty)
    return f"{head} ({n} file{'' if n == 1 else 's'} under src/ modified)" if n else head


def percentiles_ms(latencies_s: np.ndarray) -> tuple[float, float]:
    p50, p99 = np.percentile(latencies_s, [50, 99])
    return float(p50) * 1e3, float(p99) * 1e3


def sample_input() -> np.ndarray:
    """One [1, 64] sample, rounded to 5 significant digits so the JSON body holds it exactly."""
    rng = np.random.default_rng(1234)
    raw = rng.standard_normal((1, MODEL_SIZES[0]))
    return np.array([[float(f"{v:.5g}") for v in raw[0]]], dtype=np.float32)


def v2_json_body(x: np.ndarray) -> bytes:
    body = {
        "inputs": [
            {
                "name": INPUT_NAME,
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": [float(f"{v:.5g}") for v in x.ravel().tolist()],
            }
        ]
    }
    return json.dumps(body).encode()


# ----------------------------------------------------------------------------------------------
# load generators


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
        MODEL_NAME,
        "-u",
        f"{HOST}:{port}",
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


# ----------------------------------------------------------------------------------------------
# in-process ceiling


def ort_session(model_path: Path, threads: int | None) -> ort.InferenceSession:
    """threads=None: onnxruntime's default SessionOptions; else intra_op=threads, sequential."""
    if threads is None:
        return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])


def ceiling_point(
    model_path: Path,
    threads: int | None,
    x: np.ndarray,
    seconds: float,
    warmup: float,
    *,
    progress: Progress,
    task: TaskID,
) -> Point:
    sess = ort_session(model_path, threads)
    feed = {INPUT_NAME: x}
    end = time.perf_counter() + warmup
    for _ in range(20):
        sess.run(None, feed)
    while time.perf_counter() < end:
        sess.run(None, feed)
    lat: list[float] = []
    t0 = time.perf_counter()
    end = t0 + seconds
    tick = t0 + 0.25
    while True:
        a = time.perf_counter()
        sess.run(None, feed)
        b = time.perf_counter()
        lat.append(b - a)
        if b >= tick:
            progress.update(task, completed=min(b - t0, seconds))
            tick = b + 0.25
        if b >= end:
            break
    elapsed = time.perf_counter() - t0
    p50, p99 = percentiles_ms(np.asarray(lat))
    return Point(
        loader="onnxruntime",
        fmt="in-process",
        concurrency=1,
        inf_per_s=len(lat) / elapsed,
        p50_ms=p50,
        p99_ms=p99,
        label="1 thread" if threads == 1 else "ORT defaults",
        requests=len(lat),
        raw={"intra_op_threads": threads, "calls": len(lat), "elapsed_s": elapsed},
    )


# ----------------------------------------------------------------------------------------------
# server


class Server:
    """modelport serve as a child process; stopped by its PID."""

    def __init__(self, repo: Path, log: Path, extra_args: Sequence[str]) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port()
        while self.grpc_port == self.http_port:
            self.grpc_port = free_port()
        exe = Path(sys.executable).with_name("modelport")
        self.cmd = [
            str(exe) if exe.is_file() else "modelport",
            "serve",
            "--model-repository",
            str(repo),
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--host",
            HOST,
            *extra_args,
        ]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://{HOST}:{self.http_port}"

    def start(self) -> None:
        with self.log.open("w") as out:
            out.write(f"$ {shlex.join(self.cmd)}\n")
            out.flush()
            # Own session: a Ctrl-C in the terminal reaches only us; we stop the server ourselves.
            self.proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text().splitlines()[-n:])
        return ""

    def wait_ready(self, timeout_s: float) -> float:
        t0 = time.monotonic()
        last = "no answer yet"
        while time.monotonic() - t0 < timeout_s:
            if not self.alive():
                assert self.proc is not None
                raise BenchmarkError(
                    f"server exited with {self.proc.returncode} before it was ready:\n"
                    f"{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.base}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
                    last = f"HTTP {r.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except (OSError, urllib.error.URLError) as e:
                last = str(e)
            time.sleep(0.2)
        raise BenchmarkError(
            f"server not ready after {timeout_s:.0f} s ({last}):\n{self.log_tail()}"
        )

    def stop(self) -> int | None:
        """SIGTERM the PID, wait up to 15 s, then SIGKILL. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode


def check_answer(server: Server, body: bytes, expected: np.ndarray) -> float:
    """POST the JSON body once; fail unless the output matches expected. Returns max |diff|."""
    req = urllib.request.Request(
        f"{server.base}/v2/models/{MODEL_NAME}/infer",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            resp = json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise BenchmarkError(
            f"POST /v2/models/{MODEL_NAME}/infer -> HTTP {e.code}: {e.read()[:1000]!r}"
        ) from e
    outputs = {o["name"]: o for o in resp.get("outputs", [])}
    if OUTPUT_NAME not in outputs:
        raise BenchmarkError(f"answer has no output {OUTPUT_NAME!r}: {str(resp)[:1000]}")
    out = outputs[OUTPUT_NAME]
    got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    if out.get("datatype") != "FP32" or got.shape != expected.shape:
        raise BenchmarkError(
            f"answer has datatype {out.get('datatype')} shape {list(got.shape)}, "
            f"expected FP32 {list(expected.shape)}"
        )
    diff = float(np.max(np.abs(got - expected)))
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise BenchmarkError(
            "WRONG ANSWER from the server: max |diff| vs in-process onnxruntime = "
            f"{diff:.3g}\n got      {got.ravel()[:5]}\n expected {expected.ravel()[:5]}"
        )
    return diff


# ----------------------------------------------------------------------------------------------
# output


def fmt_num(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def table_rows(points: Sequence[Point]) -> list[list[str]]:
    rows = []
    for p in points:
        fmt = p.fmt if not p.label else f"{p.fmt} ({p.label})"
        conc = str(p.concurrency) if p.loader != "onnxruntime" else "1 (loop)"
        rows.append(
            [
                p.loader,
                fmt,
                conc,
                fmt_num(p.inf_per_s, 0),
                fmt_num(p.p50_ms, 3),
                fmt_num(p.p99_ms, 3),
                fmt_num(p.ratio, 3),
            ]
        )
    return rows


HEADERS = ["load generator", "format", "concurrency", "inf/s", "p50 ms", "p99 ms", "ratio"]


def rich_table(points: Sequence[Point], title: str) -> Table:
    t = Table(title=title)
    for i, h in enumerate(HEADERS):
        t.add_column(h, justify="left" if i < 2 else "right")
    for row in table_rows(points):
        t.add_row(*row)
    return t


def markdown(meta: Meta, points: Sequence[Point], ceiling: Point, notes: Sequence[str]) -> str:
    lines = [
        f"# modelport HTTP serving benchmark, {meta.date}",
        "",
        f"- date: {meta.started}",
        f"- machine: {meta.machine}, CPU: {meta.cpu_model}, cores: {meta.cores}",
        f"- python {meta.python}, onnxruntime {meta.onnxruntime}, modelport {meta.modelport}, "
        f"numpy {meta.numpy}",
        f"- modelport checkout: {meta.git}",
        f"- load generators: perf_analyzer {meta.perf_analyzer}, wrk {meta.wrk}",
        f"- model: {meta.model}; batch 1 per request; {meta.seconds:g} s per point after a "
        f"{meta.warmup:g} s warm-up; concurrency {', '.join(map(str, meta.concurrency))}",
        f"- server: `modelport serve {' '.join(meta.server_args)}` (127.0.0.1, default settings)",
        f"- command: `{meta.command}`",
        "",
        f"ratio = inf/s divided by the in-process ceiling, the better of the two onnxruntime "
        f"loops ({ceiling.label}, {ceiling.inf_per_s:,.0f} inf/s). Server and load generator "
        "share the same cores.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(HEADERS) - 2)) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(points)]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    lines += [
        "",
        "Method: perf_analyzer runs three windows of seconds/3 (`-s 999 -r 3`, merged); wrk runs "
        "min(2, c) threads and c connections posting one fixed v2 JSON body "
        "(`benchmarks/wrk_post.lua`); the ceiling times each `session.run` call on the same "
        "[1, 64] input (1 thread: intra_op=1, inter_op=1, sequential; ORT defaults: no session "
        "options). Every point starts with a warm-up of the same load generator.",
        "",
    ]
    return "\n".join(lines)


def plot(points: Sequence[Point], ceilings: Sequence[Point], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served = [p for p in points if p.loader != "onnxruntime"]
    concs = sorted({p.concurrency for p in served})
    series = [(lo, f) for lo, f in LOADERS if any(p.loader == lo and p.fmt == f for p in served)]
    width = 0.8 / max(1, len(series))
    xs = np.arange(len(concs))
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, (lo, f) in enumerate(series):
        by_c = {p.concurrency: p for p in served if p.loader == lo and p.fmt == f}
        off = xs + (i - (len(series) - 1) / 2) * width
        thr = [by_c[c].inf_per_s if c in by_c else 0.0 for c in concs]
        p99 = [by_c[c].p99_ms if c in by_c else 0.0 for c in concs]
        label = f"{lo} / {f}"
        bars = ax_t.bar(off, thr, width, label=label)
        ax_t.bar_label(bars, fmt="%.0f", fontsize=7)
        bars = ax_l.bar(off, p99, width, label=label)
        ax_l.bar_label(bars, fmt="%.2f", fontsize=7)
    styles = ["--", ":"]
    for j, c in enumerate(ceilings):
        ax_t.axhline(
            c.inf_per_s,
            color="black",
            linestyle=styles[j % 2],
            linewidth=1,
            label=f"in-process ORT, {c.label}: {c.inf_per_s:,.0f} inf/s",
        )
        ax_l.axhline(
            c.p99_ms,
            color="black",
            linestyle=styles[j % 2],
            linewidth=1,
            label=f"in-process ORT, {c.label}: p99 {c.p99_ms:.3f} ms",
        )
    for ax, ylabel in ((ax_t, "throughput (inferences/s)"), (ax_l, "p99 latency (ms)")):
        ax.set_xticks(xs, [f"concurrency {c}" for c in concs])
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    ax_t.set_yscale("log")
    ax_t.set_title("throughput (log scale; higher is better)")
    ax_l.set_title("p99 latency (lower is better)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each point")
    ap.add_argument("--concurrency", default="1,16", help="comma-separated (default 1,16)")
    ap.add_argument("--perf-analyzer", help="perf_analyzer command (default: setup_loadgen's)")
    ap.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for ready")
    ap.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra modelport serve argument (repeatable), e.g. --server-arg=--log-level=warning",
    )
    ap.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG")
    a = ap.parse_args(argv)
    if a.seconds <= 0 or a.warmup < 0:
        ap.error("--seconds must be > 0 and --warmup >= 0")
    try:
        a.concurrency = [int(c) for c in a.concurrency.split(",") if c.strip()]
    except ValueError:
        ap.error("--concurrency: comma-separated integers")
    if not a.concurrency or min(a.concurrency) < 1:
        ap.error("--concurrency: positive integers")
    return a


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so that the finally blocks stop the server."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    def v(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "unknown"

    return {"onnxruntime": ort.__version__, "modelport": v("modelport"), "numpy": np.__version__}


def run(a: argparse.Namespace) -> int:
    from modelport.examples import onnx_models

    started = dt.datetime.now().astimezone()
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"serving_http-{started:%Y%m%d-%H%M%S}-", dir=WORK_DIR))
    logs = run_dir / "logs"
    logs.mkdir()
    repo = run_dir / "repository"
    (repo / MODEL_NAME / "1").mkdir(parents=True)
    model_path = repo / MODEL_NAME / "1" / "model.onnx"
    onnx_models.save(onnx_models.mlp(MODEL_SIZES, seed=MODEL_SEED), str(model_path))

    tools = find_tools(a.perf_analyzer)
    pa_version = tool_version([str(tools.perf_analyzer), "--version"], r"Version ([\w.]+)")
    wrk_version = tool_version([str(tools.wrk), "--version"], r"wrk ([^\s]+)")
    vers = versions()
    command = shlex.join(
        [os.path.relpath(sys.executable), os.path.relpath(__file__), *sys.argv[1:]]
    )
    meta = Meta(
        date=f"{started:%Y-%m-%d}",
        started=started.isoformat(timespec="seconds"),
        command=command,
        machine=platform.machine(),
        cpu_model=cpu_model(),
        cores=os.cpu_count() or 0,
        python=platform.python_version(),
        onnxruntime=vers["onnxruntime"],
        modelport=vers["modelport"],
        numpy=vers["numpy"],
        git=git_state(),
        perf_analyzer=pa_version,
        wrk=wrk_version,
        seconds=a.seconds,
        warmup=a.warmup,
        concurrency=a.concurrency,
        model=f"MLP {'->'.join(map(str, MODEL_SIZES))} FP32 (onnx_models.mlp, seed {MODEL_SEED})",
    )
    console.print(
        f"[bold]modelport HTTP serving benchmark[/] {meta.started}  {meta.machine}, "
        f"{meta.cpu_model}, {meta.cores} cores; python {meta.python}, onnxruntime "
        f"{meta.onnxruntime}, modelport {meta.modelport}; perf_analyzer {pa_version}, "
        f"wrk {wrk_version}"
    )
    console.print(f"work directory: {run_dir.relative_to(REPO_ROOT)}")

    x = sample_input()
    reference = ort_session(model_path, None).run(None, {INPUT_NAME: x})[0]
    body_file = run_dir / "infer_body.json"
    body = v2_json_body(x)
    body_file.write_bytes(body)

    points: list[Point] = []
    ceilings: list[Point] = []
    notes: list[str] = []
    server = Server(repo, logs / "server.log", a.server_arg)
    meta.server_args = server.cmd[2:]
    n_points = len(LOADERS) * len(a.concurrency)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
        console=console,
    )
    with sigterm_as_exit(), progress:
        overall = progress.add_task("overall (points)", total=n_points + 2)

        # 1. in-process ceiling, before the server exists so nothing else competes for the cores.
        for threads in (1, None):
            name = "1 thread" if threads == 1 else "ORT defaults"
            step = progress.add_task(f"in-process onnxruntime, {name}", total=a.seconds)
            c = ceiling_point(
                model_path, threads, x, a.seconds, a.warmup, progress=progress, task=step
            )
            progress.remove_task(step)
            ceilings.append(c)
            progress.advance(overall)
            progress.console.log(
                f"ceiling {name}: {c.inf_per_s:,.0f} inf/s, p50 {c.p50_ms:.3f} ms, "
                f"p99 {c.p99_ms:.3f} ms"
            )

        # 2. the server
        try:
            with console.status("starting modelport serve"):
                server.start()
                ready_s = server.wait_ready(a.ready_timeout)
            progress.console.log(
                f"server pid {server.pid} ready in {ready_s:.1f} s on {server.base} "
                f"(log {server.log.relative_to(REPO_ROOT)})"
            )
            diff = check_answer(server, body, reference)
            progress.console.log(f"answer matches in-process onnxruntime (max |diff| {diff:.2g})")
            url = f"{server.base}/v2/models/{MODEL_NAME}/infer"
            for loader, fmt in LOADERS:
                for conc in a.concurrency:
                    desc = f"{loader} {fmt} c={conc}"
                    for phase, secs in (("warm-up", a.warmup), ("measure", a.seconds)):
                        if secs <= 0:
                            continue
                        step = progress.add_task(f"{desc}: {phase}", total=secs)
                        log = logs / f"{loader}-{fmt}-c{conc}-{phase}.log"
                        if loader == "perf_analyzer":
                            p = perf_analyzer_point(
                                tools,
                                server.http_port,
                                fmt,
                                conc,
                                secs,
                                log=log,
                                progress=progress,
                                task=step,
                            )
                        else:
                            p = wrk_point(
                                tools,
                                url,
                                body_file,
                                conc,
                                secs,
                                log=log,
                                progress=progress,
                                task=step,
                            )
                        progress.remove_task(step)
                        if not server.alive():
                            raise BenchmarkError(
                                f"server died during {desc} {phase}:\n{server.log_tail()}"
                            )
                    points.append(p)
                    if p.errors:
                        notes.append(f"{desc}: {p.errors} errors ({p.raw.get('wrk')})")
                    progress.advance(overall)
                    progress.console.log(
                        f"{desc}: {p.inf_per_s:,.0f} inf/s, p50 {p.p50_ms:.3f} ms, "
                        f"p99 {p.p99_ms:.3f} ms" + (f", {p.errors} errors" if p.errors else "")
                    )
            diff = check_answer(server, body, reference)
            progress.console.log(f"answer still matches after the load (max |diff| {diff:.2g})")
        finally:
            rc = server.stop()
            if server.proc is not None:
                progress.console.log(f"server pid {server.pid} stopped (exit status {rc})")

    # 3. results
    best = max(ceilings, key=lambda c: c.inf_per_s)
    for p in [*points, *ceilings]:
        p.ratio = p.inf_per_s / best.inf_per_s
    all_points = [*points, *ceilings]
    server_log = server.log.read_text()
    bad = [ln for ln in server_log.splitlines() if re.search(r"\b(ERROR|CRITICAL|Traceback)\b", ln)]
    if bad:
        notes.append(f"server log has {len(bad)} error lines, first: {bad[0][:300]}")

    title = (
        f"modelport HTTP, MLP 64-256-256-10 FP32, batch 1 — {meta.date}, {meta.machine} "
        f"{meta.cpu_model}, {meta.cores} cores"
    )
    console.print(rich_table(all_points, title))
    for n in notes:
        console.print(f"[yellow]note:[/] {n}")

    a.results_dir.mkdir(parents=True, exist_ok=True)
    stem = a.results_dir / f"serving_http-{meta.date}"
    stem.with_suffix(".md").write_text(markdown(meta, all_points, best, notes))
    raw = {
        "meta": asdict(meta),
        "ceiling": asdict(best),
        "points": [asdict(p) for p in all_points],
        "notes": notes,
        "server_log_error_lines": bad[:50],
        "work_dir": str(run_dir.relative_to(REPO_ROOT)),
    }
    stem.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    written = [stem.with_suffix(".md"), stem.with_suffix(".json")]
    if not a.no_plot:
        plot(points, ceilings, stem.with_suffix(".png"), title)
        written.append(stem.with_suffix(".png"))
    for w in written:
        console.print(f"wrote {w.relative_to(REPO_ROOT) if w.is_relative_to(REPO_ROOT) else w}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        return run(a)
    except BenchmarkError as e:
        console.print(f"[bold red]benchmark failed:[/] {e}")
        return 1
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
