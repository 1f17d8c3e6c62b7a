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
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
from loadgen import (
    LOADERS,
    REPO_ROOT,
    BenchmarkError,
    Point,
    console,
    find_tools,
    perf_analyzer_point,
    tool_version,
    wrk_point,
)
from machine import cpu_model, git_state, versions
from report import Meta, markdown, plot, rich_table
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from server_process import HOST, Server

BENCH_DIR = Path(__file__).resolve().parent
WORK_DIR = BENCH_DIR / ".work"
RESULTS_DIR = BENCH_DIR / "results"

MODEL_NAME = "mlp"
MODEL_SIZES = (64, 256, 256, 10)
MODEL_SEED = 0
INPUT_NAME = "input"
OUTPUT_NAME = "output"


# ----------------------------------------------------------------------------------------------
# small helpers


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
                                model=MODEL_NAME,
                                host=HOST,
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
