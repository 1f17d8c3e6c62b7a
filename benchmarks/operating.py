"""What operating features cost: mlp at concurrency 32 over REST JSON with tracing off, sampled
1 % and 100 %, the access log as text and as JSON, and the dashboard open, against the same
server with all of it off, and against the commit before any of it existed.

Every round starts one `modelport serve` per configuration (the order reverses every other
round) and measures it with wrk (2 threads, 32 keep-alive connections, `benchmarks/wrk_post.lua`
posting one v2 JSON body to `/v2/models/mlp/infer`):

- `before`: the server at --before REV (default: the commit before the operating features),
  run from a git worktree of that commit, with its default flags;
- `off`: this tree, --no-access-log (tracing is off by default): what "off costs nothing" means;
- `trace-1%` / `trace-100%`: --trace-sample-ratio 0.01 / 1 with --otlp-endpoint pointing at a
  small OTLP/HTTP sink this script runs (it answers 200 and counts the spans' bytes), so spans
  are made, batched and exported as in production;
- `log-text` / `log-json`: the access log on (the default), --log-format text / json, written to
  the server's log file;
- `dashboard`: `off` with a poller doing what an open dashboard page does: the page once, then
  every 2 s its data request(s) and /v2/alerts.

    python benchmarks/operating.py --tag TAG [--rounds 4] [--dur 8] [--warm 2] [--before REV]
        --> benchmarks/results/operating-DATE-TAG.md and .png

Needs wrk and the shared bench's mlp (bash ../shared/bench/setup.sh torch).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from server_process import Server  # noqa: E402

PEERS = Path(os.environ.get("PEERS", Path.home() / ".cache" / "modelport-bench"))
MODELS = PEERS / "models"
MLP_CONFIG = BENCH_DIR / "configs" / "bench-mlp.yaml"
WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"
CONFIGS = ("before", "off", "trace-1%", "trace-100%", "log-text", "log-json", "dashboard")
DASHBOARD_POLL_S = 2.0
SERIES_PATH = "/dashboard/api/series"
ALERTS_PATH = "/v2/alerts"
"""What the open page asks for every DASHBOARD_POLL_S (frontends/rest/dashboard)."""
TARGETS = (
    ("off", "before", 0.98, "tracing and logs off cost nothing measurable (off / before >= 0.98)"),
    ("trace-100%", "off", 0.90, "100 % sampling costs at most 10 % (trace-100% / off >= 0.90)"),
    ("dashboard", "off", 0.98, "an open dashboard costs at most 2 % (dashboard / off >= 0.98)"),
)


class OtlpSink:
    """Accepts OTLP/HTTP exports (any POST) and answers 200, counting requests and bytes."""

    def __init__(self) -> None:
        sink = self
        self.requests = 0
        self.bytes = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                self.rfile.read(length)
                sink.requests += 1
                sink.bytes += length
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1/traces"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()


class DashboardPoller:
    """What an open dashboard does to the server, on a thread, until stopped."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.polls = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _get(self, path: str) -> bytes:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as response:
                return bytes(response.read())
        except Exception as exc:
            if len(self.failures) < 5:
                self.failures.append(f"{path}: {exc}")
        return b""

    def _run(self) -> None:
        self._get("/dashboard")
        since: float | None = None
        while not self._stop.is_set():
            # as dashboard.js does: everything first, then only the points after the newest
            # point every version has
            query = "" if since is None else f"?since={since}"
            answer = self._get(SERIES_PATH + query)
            since = _newest_common_point(answer) if answer else None
            self._get(ALERTS_PATH)
            self.polls += 1
            self._stop.wait(DASHBOARD_POLL_S)

    def __enter__(self) -> DashboardPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def _newest_common_point(answer: bytes) -> float | None:
    lasts = [
        version["series"]["time"][-1]
        for model in json.loads(answer).get("models", [])
        for version in model.get("versions", [])
        if version.get("series") and version["series"]["time"]
    ]
    return min(lasts) if lasts else None


def make_body(work: Path) -> Path:
    row = np.load(MODELS / "mlp.input.npy")[:1].astype(np.float32)
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(row.shape),
                "datatype": "FP32",
                "data": row.ravel().tolist(),
            }
        ]
    }
    path = work / "mlp.json"
    path.write_text(json.dumps(body))
    return path


def flags(config: str, sink: OtlpSink) -> list[str]:
    quiet = ["--no-access-log"]
    return {
        "before": [],
        "off": quiet,
        "trace-1%": [*quiet, "--trace-sample-ratio", "0.01", "--otlp-endpoint", sink.url],
        "trace-100%": [*quiet, "--trace-sample-ratio", "1", "--otlp-endpoint", sink.url],
        "log-text": ["--log-format", "text"],
        "log-json": ["--log-format", "json"],
        "dashboard": quiet,
    }[config]


def run_wrk(base: str, body: Path, seconds: float, log: Path) -> dict[str, Any]:
    command = ["wrk", "-t2", "-c32", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    command += ["-s", str(WRK_SCRIPT), f"{base}/v2/models/mlp/infer"]
    done = subprocess.run(
        command,
        env=dict(os.environ, BODY_FILE=str(body)),
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    log.write_text(f"$ {shlex.join(command)}\n{done.stdout}\n{done.stderr}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("WRK_RESULT ")]
    if not lines:
        raise SystemExit(f"wrk printed no result:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    result = json.loads(lines[-1].removeprefix("WRK_RESULT "))
    errors = sum(result[k] for k in result if k.startswith("err_"))
    return {
        "per_s": (result["requests"] - errors) / (result["duration_us"] / 1e6),
        "p50_ms": result["p50_us"] / 1e3,
        "p99_ms": result["p99_us"] / 1e3,
        "errors": errors,
    }


def measure(
    config: str, index: int, args: argparse.Namespace, work: Path, body: Path, sink: OtlpSink
) -> dict[str, Any]:
    log = work / "logs" / f"r{index}-{config}.log"
    env_path = str(args.before_tree / "src") if config == "before" else str(ROOT / "src")
    server = Server(work / "repo", log, flags(config, sink))
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = env_path  # the server's code: this tree or the worktree
    try:
        server.start()
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous
    try:
        server.wait_ready(120)
        run_wrk(server.base, body, args.warm, log.with_suffix(".warm.log"))
        spans_before = sink.bytes
        load = os.getloadavg()[0]
        if config == "dashboard":
            with DashboardPoller(server.base) as poller:
                result = run_wrk(server.base, body, args.dur, log.with_suffix(".wrk.log"))
            result["polls"] = poller.polls
            result["poll_failures"] = poller.failures
        else:
            result = run_wrk(server.base, body, args.dur, log.with_suffix(".wrk.log"))
        result["otlp_bytes"] = sink.bytes - spans_before
    finally:
        server.stop()
    result.update(config=config, round=index, load1=load)
    print(
        f"round {index} {config:<11} {result['per_s']:>9,.0f}/s  p99 {result['p99_ms']:.2f} ms"
        f"  errors {result['errors']}  load1 {load:.2f}",
        flush=True,
    )
    return result


def ratios(rows: list[dict[str, Any]], config: str, base: str) -> list[float]:
    by_round: dict[int, dict[str, float]] = {}
    for row in rows:
        by_round.setdefault(row["round"], {})[row["config"]] = row["per_s"]
    return [r[config] / r[base] for r in by_round.values() if config in r and base in r]


def span(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    middle, low, high = statistics.median(values), min(values), max(values)
    return f"{middle:,.{digits}f} [{low:,.{digits}f}-{high:,.{digits}f}]"


def report(rows: list[dict[str, Any]], args: argparse.Namespace, took: float) -> str:
    sys.path.insert(0, str(BENCH_DIR))
    from machine import cpu_model, git_state

    lines = [
        f"# What operating features cost: {args.tag} ({time.strftime('%Y-%m-%d')})",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({took / 60:.1f} min)",
        f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}; server, wrk, "
        "the OTLP sink and the dashboard poller share the cores, and other agents' work ran on "
        "the same machine (`load1` below)",
        f"- modelport at {git_state()}; `before` = {args.before} (a git worktree)",
        f"- command: `{args.command}`",
        "- model: the shared bench mlp (FP32 [1, 64] -> [1, 10]) with "
        "`benchmarks/configs/bench-mlp.yaml`; wrk 2 threads, 32 connections, one v2 JSON row "
        "per request",
        f"- {args.rounds} rounds, the order reversed every other round; each measurement "
        f"{args.warm:g} s warm-up then {args.dur:g} s",
        "",
        "## Results (median over rounds [min-max])",
        "",
        "| configuration | server flags | requests/s | p50 ms | p99 ms | vs off (per round) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    sink_url = "URL"
    for config in CONFIGS:
        mine = [r for r in rows if r["config"] == config]
        if not mine:
            continue
        shown = " ".join(flags(config, _Named(sink_url))) or "(defaults)"
        lines.append(
            f"| {config} | `{shown}` | {span([r['per_s'] for r in mine], 0)} | "
            f"{span([r['p50_ms'] for r in mine], 2)} | {span([r['p99_ms'] for r in mine], 2)} | "
            f"{span(ratios(rows, config, 'off'), 3)} |"
        )
    lines += ["", "## Targets", ""]
    for config, base, floor, text in TARGETS:
        values = ratios(rows, config, base)
        if not values:
            lines.append(f"- {text}: not measured")
            continue
        met = statistics.median(values) >= floor
        lines.append(f"- {text}: {'met' if met else '**NOT met**'}: {span(values, 3)}")
    lines += [
        "",
        "## Every measurement",
        "",
        "| round | configuration | requests/s | p99 ms | errors | OTLP bytes | load1 |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['round']} | {r['config']} | {r['per_s']:,.0f} | {r['p99_ms']:.2f} | "
            f"{r['errors']} | {r['otlp_bytes']:,} | {r['load1']:.2f} |"
        )
    polls = [r for r in rows if r["config"] == "dashboard"]
    if polls:
        failures = sorted({f for r in polls for f in r.get("poll_failures", [])})
        lines += [
            "",
            f"Dashboard polls per measurement: {', '.join(str(r['polls']) for r in polls)}"
            + (f"; failures: {failures}" if failures else "; none failed."),
        ]
    return "\n".join(lines) + "\n"


class _Named:
    def __init__(self, url: str) -> None:
        self.url = url


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in CONFIGS if any(r["config"] == c for r in rows)]
    fig, ax = plt.subplots(figsize=(8, 4))
    for x, config in enumerate(shown):
        values = [r["per_s"] for r in rows if r["config"] == config]
        ax.bar(x, statistics.median(values), color="#1f77b4" if config != "before" else "#8c8c8c")
        ax.plot([x] * len(values), values, "k.", markersize=4)
    ax.set_xticks(range(len(shown)), shown)
    ax.set_ylabel("requests/s (median, dots: rounds)")
    ax.set_title("mlp, REST JSON, concurrency 32: operating features on and off")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="run")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dur", type=float, default=8.0)
    parser.add_argument("--warm", type=float, default=2.0)
    parser.add_argument("--before", default="ee3ce53", help="the commit to compare `off` with")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args()
    args.command = "python benchmarks/operating.py " + shlex.join(sys.argv[1:])
    configs = [c for c in CONFIGS if c in args.configs.split(",")]
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    if not (MODELS / "mlp.onnx").exists():
        raise SystemExit(f"{MODELS / 'mlp.onnx'} is missing (bash ../shared/bench/setup.sh torch)")
    work = Path(tempfile.mkdtemp(prefix="opbench-"))
    (work / "logs").mkdir()
    (work / "repo" / "mlp" / "1").mkdir(parents=True)
    shutil.copy(MODELS / "mlp.onnx", work / "repo" / "mlp" / "1" / "model.onnx")
    shutil.copy(MLP_CONFIG, work / "repo" / "mlp" / "config.yaml")
    body = make_body(work)
    args.before_tree = work / "before"
    if "before" in configs:
        subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "worktree",
                "add",
                "--detach",
                str(args.before_tree),
                args.before,
            ],
            check=True,
            capture_output=True,
        )
    sink = OtlpSink()
    rows: list[dict[str, Any]] = []
    started = time.time()
    try:
        for index in range(1, args.rounds + 1):
            for config in configs if index % 2 else configs[::-1]:
                rows.append(measure(config, index, args, work, body, sink))
    finally:
        sink.close()
        if args.before_tree.exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                subprocess.run(
                    [
                        "git",
                        "-C",
                        str(ROOT),
                        "worktree",
                        "remove",
                        "--force",
                        str(args.before_tree),
                    ],
                    check=True,
                    capture_output=True,
                )
    stem = f"operating-{time.strftime('%Y-%m-%d')}-{args.tag}"
    args.out.mkdir(parents=True, exist_ok=True)
    text = report(rows, args, time.time() - started)
    (args.out / f"{stem}.md").write_text(text)
    (work / "rows.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / f"{stem}.png")
    print(text)
    print(f"logs and rows: {work}")


if __name__ == "__main__":
    main()
