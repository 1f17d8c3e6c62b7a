"""The HTTP/2 transport's floor: canned unary gRPC calls per second at concurrency 1 and 32, for
our HTTP/2 server, an h2-library-based connection behind the same seam, and grpc.aio.

Why: modelport serves gRPC with its own HTTP/2 server (docs/architecture.md, "gRPC"). This keeps
that choice a measured one: with the handler reduced to a canned reply (benchmarks/
transport_servers.py), what is left is the transport: framing, HPACK, flow control and the gRPC
layer's message handling. `ours` and `h2` run the very same gRPC Dispatcher, so their difference
is the HTTP/2 layer alone (benchmarks/h2_seam.py); `grpc-aio` is grpcio's asyncio server.

Every round starts each server in turn (A B C, A B C, ...) in a process of its own pinned to
one CPU, checks one call with a real gRPC client (grpcio: status OK, the canned bytes back), and
measures it with h2load (nghttp2, written in C so that the client is not the bottleneck), pinned
to another CPU: one HTTP/2 connection carrying 1 or 32 concurrent streams (as one gRPC channel),
each a unary ModelInfer call (POST, `content-type: application/grpc`, `te: trailers`, one
length-prefixed request message). h2load counts HTTP statuses only, so the count of calls the
server's handler answered must cover what h2load counted as succeeded.

    python benchmarks/transport_floor.py --tag TAG [--rounds 5] [--dur 8] [--warm 2]
        --> benchmarks/results/transport-floor-DATE-TAG.md and .png (`--out DIR` elsewhere)

Needs h2load: apt-get install -y nghttp2-client. `make bench-transport` installs it if missing.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from report import span
from server_process import free_port
from transport_servers import HOST, KINDS, PATH, canned_messages

BENCH_DIR = Path(__file__).resolve().parent
NAMES = {"ours": "modelport HTTP/2", "h2": "h2 behind the same seam", "grpc-aio": "grpc.aio"}
CONCURRENCY = (1, 32)
H2LOAD_FINISHED = re.compile(r"finished in ([\d.]+)s, ([\d.]+) req/s")
H2LOAD_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded")


def pinned(cpu: int | None, command: list[str]) -> list[str]:
    return command if cpu is None else ["taskset", "-c", str(cpu), *command]


class Server:
    def __init__(self, kind: str, work: Path, cpu: int | None, label: str) -> None:
        self.kind = kind
        self.port = free_port()
        self.count_file = work / f"count-{label}"
        self.log = work / f"server-{label}.log"
        script = BENCH_DIR / "transport_servers.py"
        command = [sys.executable, str(script), kind, str(self.port), str(self.count_file)]
        self.command = pinned(cpu, command)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.kind}: the server exited:\n{self.log.read_text()}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"{self.kind}: not listening after 30 s:\n{self.log.read_text()}")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> int:
        """Stop the server; the number of calls its handler answered."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return int(self.count_file.read_text()) if self.count_file.exists() else 0

    def check_one_call(self, request: bytes, reply: bytes) -> None:
        """One call with grpcio's client: status OK and the canned reply's bytes."""
        import grpc

        with grpc.insecure_channel(f"{HOST}:{self.port}") as channel:
            call = channel.unary_unary(PATH)
            answer, outcome = call.with_call(request, timeout=10)
        if outcome.code() != grpc.StatusCode.OK or answer != reply:
            raise SystemExit(f"{self.kind}: a real client got {outcome.code()} / {answer[:40]!r}")


def run_h2load(server: Server, streams: int, body: Path, args: Any, log: Path) -> dict[str, Any]:
    requests_log = log.with_suffix(".requests.tsv")
    command = ["h2load", "-c1", f"-m{streams}", "-t1", f"-D{args.dur:g}"]
    command += [f"--warm-up-time={args.warm:g}", "-d", str(body), "--log-file", str(requests_log)]
    command += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    command.append(f"http://{HOST}:{server.port}{PATH}")
    command = pinned(args.client_cpu, command)
    with log.open("w") as out:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        done = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, timeout=args.dur + args.warm + 60
        )
    text = log.read_text()
    finished, counts = H2LOAD_FINISHED.search(text), H2LOAD_REQUESTS.search(text)
    if done.returncode != 0 or finished is None or counts is None:
        raise SystemExit(f"h2load failed ({done.returncode}):\n{text[-2000:]}")
    latencies = sorted(
        int(row.split("\t")[2]) / 1e3
        for row in requests_log.read_text().splitlines()
        if row.count("\t") >= 2 and row.split("\t")[1].startswith("2")
    )
    if not latencies:
        raise SystemExit(f"h2load logged no successful request: {requests_log}")
    succeeded = int(counts.group(4))
    return {
        "per_s": float(finished.group(2)),
        "succeeded": succeeded,
        "errors": int(counts.group(1)) - succeeded,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "command": shlex.join(command),
    }


def percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure(kind: str, index: int, body: Path, messages: tuple[bytes, bytes], args: Any) -> list:
    rows = []
    with Server(kind, args.work, args.server_cpu, f"{kind}-r{index}") as server:
        server.check_one_call(*messages)
        for streams in CONCURRENCY:
            log = args.work / f"h2load-{kind}-c{streams}-r{index}.log"
            result = run_h2load(server, streams, body, args, log)
            rows.append({"round": index, "server": kind, "concurrency": streams, **result})
            print(
                f"round {index} {kind:8} c={streams:<3} {result['per_s']:9,.0f} calls/s  "
                f"p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms  "
                f"errors {result['errors']}  load1 {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        answered = server.stop()
    counted = sum(row["succeeded"] for row in rows)
    if answered < counted:
        raise SystemExit(f"{kind}: h2load counted {counted} answers, the handler ran {answered}")
    return rows


def ratios(rows: list[dict[str, Any]], kind: str, streams: int) -> list[float]:
    """Per round: this server's calls/s over ours (measured next to each other)."""
    by_round: dict[int, dict[str, float]] = {}
    for row in rows:
        if row["concurrency"] == streams:
            by_round.setdefault(row["round"], {})[row["server"]] = row["per_s"]
    return [r[kind] / r["ours"] for r in by_round.values() if kind in r and "ours" in r]


def version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "unknown"


def report(rows: list[dict[str, Any]], args: Any, took: float) -> str:
    from machine import cpu_model, git_state

    h2load = subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout
    packages = ", ".join(f"{n} {version(n)}" for n in ("h2", "hpack", "grpcio", "uvloop"))
    pinning = (
        f"servers pinned to CPU {args.server_cpu}, h2load to CPU {args.client_cpu}"
        if args.server_cpu is not None
        else "no CPU pinning (one CPU)"
    )
    lines = [
        f"# The HTTP/2 transport's floor: {args.tag} ({time.strftime('%Y-%m-%d')})",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({took / 60:.1f} min)",
        f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}; {pinning}",
        f"- modelport {version('modelport')} at {git_state()}; python "
        f"{platform.python_version()}; {packages}; {h2load.strip()}",
        f"- command: `{args.command}`",
        "- servers (benchmarks/transport_servers.py): ModelInfer answered with one canned "
        "ModelInferResponse (request parsed, reply serialized); `ours` and `h2` share modelport's "
        "gRPC Dispatcher on uvloop, `grpc-aio` is grpcio's asyncio server",
        f"- {args.rounds} rounds, each starting {', '.join(KINDS)} in that order; per server and "
        f"concurrency: h2load, one connection, {args.warm:g} s warm-up, {args.dur:g} s measured",
        "",
        "## Results (median over rounds [min-max])",
        "",
        "| concurrency | server | calls/s | p50 ms | p99 ms | vs ours (per round) | errors |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for streams in CONCURRENCY:
        for kind in KINDS:
            mine = [r for r in rows if r["server"] == kind and r["concurrency"] == streams]
            if not mine:
                continue
            versus = "1" if kind == "ours" else span(ratios(rows, kind, streams), 3)
            lines.append(
                f"| {streams} | {NAMES[kind]} | {span([r['per_s'] for r in mine])} | "
                f"{span([r['p50_ms'] for r in mine], 3)} | {span([r['p99_ms'] for r in mine], 3)} "
                f"| {versus} | {sum(r['errors'] for r in mine)} |"
            )
    lines += ["", "## Every measurement", ""]
    lines += ["| round | server | concurrency | calls/s | p50 ms | p99 ms | errors |"]
    lines += ["|---:|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['round']} | {row['server']} | {row['concurrency']} | {row['per_s']:,.0f} | "
            f"{row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['errors']} |"
        )
    lines += ["", "Load generator commands (one round):", ""]
    lines += [f"- `{row['command']}`" for row in rows if row["round"] == 1]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(CONCURRENCY), figsize=(10, 4))
    colors = {"ours": "#4c72b0", "h2": "#dd8452", "grpc-aio": "#55a868"}
    for axis, streams in zip(axes, CONCURRENCY, strict=True):
        for x, kind in enumerate(KINDS):
            values = [
                r["per_s"] for r in rows if r["server"] == kind and r["concurrency"] == streams
            ]
            if not values:
                continue
            axis.bar(x, statistics.median(values), color=colors[kind])
            axis.scatter([x] * len(values), values, color="black", s=10, zorder=3)
        axis.set_xticks(range(len(KINDS)), [NAMES[k] for k in KINDS], fontsize=8)
        axis.set_title(f"concurrency {streams} (one connection)")
        axis.set_ylim(bottom=0)
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("canned unary calls/s (bars: median; dots: rounds)")
    figure.suptitle("gRPC transport floor: our HTTP/2 server, h2 behind the same seam, grpc.aio")
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dur", type=float, default=8.0, help="seconds measured per run")
    parser.add_argument("--warm", type=float, default=2.0, help="h2load warm-up seconds")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    args = parser.parse_args()
    args.command = "python benchmarks/transport_floor.py " + shlex.join(sys.argv[1:])
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is missing: apt-get install -y nghttp2-client")
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        args.server_cpu = args.client_cpu = None
    args.work = Path(tempfile.mkdtemp(prefix="transport-floor-"))
    request, reply = canned_messages()
    message = request.SerializeToString()
    body = args.work / "request.grpc"
    body.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
    messages = (message, reply.SerializeToString())
    rows: list[dict[str, Any]] = []
    started = time.time()
    for index in range(1, args.rounds + 1):
        for kind in KINDS:
            rows.extend(measure(kind, index, body, messages, args))
    took = time.time() - started
    stem = f"transport-floor-{time.strftime('%Y-%m-%d')}-{args.tag}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.work / "rows.json").write_text(json.dumps(rows, indent=1))
    text = report(rows, args, took)
    (args.out / f"{stem}.md").write_text(text)
    plot(rows, args.out / f"{stem}.png")
    print(text)
    print(f"logs and rows: {args.work}")


if __name__ == "__main__":
    main()
