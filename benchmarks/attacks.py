"""What a hostile HTTP/2 client costs everyone else: a well-behaved gRPC client's ModelInfer latency
(p50/p99) while each attack of issue 19 runs, against the same measurement with no attack, in
alternating quiet and attack windows.

For each attack a fresh `modelport serve` (default flags, pinned to CPU 0 with taskset when
there are two CPUs or more) serves a small MLP (FP32 [1, 64] -> [1, 10], made here). The measured
client is tritonclient.grpc making one unary ModelInfer call after another on one channel, in this
process (pinned to CPU 1). The attacker is a child process (`--attacker KIND`, also on CPU 1, at
nice 10 so it does not take that CPU from the measured client: a real attacker would not share
its CPU) speaking hand-made HTTP/2 through tests/h2attacker.py from its own loopback address, for
the whole window, reconnecting whenever the server sends it away:

- `rapid-reset-data`: HEADERS + 1-byte DATA + RST_STREAM cycles on one connection;
- `rapid-reset`: HEADERS + RST_STREAM cycles;
- `reconnect-flood`: short connections one after another, each resetting 10 streams;
- `settings-flood`: maximum-size SETTINGS frames (16 KiB, 2,730 settings each);
- `ping-data-flood`: an open call, then PINGs each followed by a 1-byte DATA of its message;
- `unfinished`: 8 connections x 16 calls, each sending all of a 4 MiB message but its last
  byte (512 MiB asked for; the server-wide budget for requests still arriving is 256 MiB).

Each window: `--dur` seconds of calls (after `--warm` seconds of calls before the first). The
target (issue 19): under attack, the client's p99 stays within 2x its quiet p99.

    python benchmarks/attacks.py --tag TAG [--rounds 3] [--dur 5] [--attacks a,b]
        --> benchmarks/results/attacks-DATE-TAG.md and .png
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
from pathlib import Path
from typing import Any

from report import span

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(ROOT))

ATTACKS = (
    "rapid-reset-data",
    "rapid-reset",
    "reconnect-flood",
    "settings-flood",
    "ping-data-flood",
    "unfinished",
)
TARGET_RATIO = 2.0
SERVER_CPU, CLIENT_CPU = 0, 1
ATTACKER_NICE = 10
UNFINISHED = (8, 16, 4 << 20)  # connections, calls each, message bytes
RECONNECT_RESETS = 10
SOURCES = {name: f"127.0.0.{index}" for index, name in enumerate(ATTACKS, start=10)}


# -- the attacker (a child process) ----------------------------------------------------------------


def attack(kind: str, port: int, seconds: float) -> dict[str, Any]:
    """Run one attack for `seconds`; what it sent and how the server answered."""
    from tests import h2attacker as h

    source = SOURCES[kind]
    deadline = time.monotonic() + seconds
    outcomes: list[h.Outcome] = []
    statuses: dict[str, int] = {}
    if kind == "unfinished":
        connections, calls, size = UNFINISHED
        clients = []
        for _ in range(connections):
            if time.monotonic() > deadline:
                break
            client = h.RawClient(port, source)
            clients.append((client, h.unfinished_messages(client, calls, size, deadline=deadline)))
        time.sleep(max(0.0, deadline - time.monotonic()))
        for client, streams in clients:
            for stream in streams:
                status = client.stream(stream).status
                name = (
                    "held"
                    if status is None
                    else {4: "stalled", 14: "refused"}.get(status[0], f"status {status[0]}")
                )
                statuses[name] = statuses.get(name, 0) + 1
            outcomes.append(h.outcome_of(client))
            client.close()
    elif kind == "reconnect-flood":
        while time.monotonic() < deadline:
            outcomes += h.reconnect_flood(port, source, 1, RECONNECT_RESETS)
    else:
        while time.monotonic() < deadline:
            with h.RawClient(port, source) as client:
                left = deadline - time.monotonic()
                if kind.startswith("rapid-reset"):
                    with_data = kind == "rapid-reset-data"
                    outcomes.append(h.rapid_reset(client, left, with_data=with_data))
                elif kind == "settings-flood":
                    outcomes.append(h.settings_flood(client, left))
                elif kind == "ping-data-flood":
                    outcomes.append(h.ping_data_flood(client, left))
                else:
                    raise SystemExit(f"unknown attack {kind!r}")
    sent_away = [o for o in outcomes if o.goaway is not None]
    first = outcomes[0] if outcomes else None
    return {
        "connections": len(outcomes),
        "frames": sum(o.frames for o in outcomes),
        "sent_away": len(sent_away),
        "first": first.describe() if first else "no connection",
        "first_streams": (first.goaway[0] + 1) // 2 if first and first.goaway else None,
        "statuses": statuses,
    }


def attacker_main(args: argparse.Namespace) -> None:
    with contextlib.suppress(OSError):
        os.nice(ATTACKER_NICE)
    from tests import h2attacker  # noqa: F401  (imported before "ready": not in the window)

    print("ready", flush=True)
    print(json.dumps(attack(args.attacker, args.port, args.seconds)), flush=True)


# -- the measurement -------------------------------------------------------------------------------


def pinning() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def make_repo(work: Path) -> Path:
    from modelport.examples import onnx_models

    repo = work / "repo"
    (repo / "mlp" / "1").mkdir(parents=True)
    model = onnx_models.mlp((64, 256, 256, 10), seed=1)
    (repo / "mlp" / "1" / "model.onnx").write_bytes(model.SerializeToString())
    return repo


class RssSampler:
    """The server's largest VmRSS over a window, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


class Caller:
    """The well-behaved client: one ModelInfer after another, each one timed."""

    def __init__(self, url: str) -> None:
        import numpy as np
        import tritonclient.grpc as triton

        self.client = triton.InferenceServerClient(url)
        self.tensor = triton.InferInput("input", [1, 64], "FP32")
        self.tensor.set_data_from_numpy(np.ones((1, 64), np.float32))

    def window(self, seconds: float) -> dict[str, Any]:
        import numpy as np

        latencies, failures = [], []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                self.client.infer("mlp", [self.tensor], client_timeout=30)
            except Exception as exc:
                failures.append(repr(exc)[:200])
                continue
            latencies.append(time.perf_counter() - started)
        values = np.asarray(latencies) * 1e3 if latencies else np.zeros(1)
        return {
            "calls": len(latencies),
            "failures": len(failures),
            "failure_examples": failures[:3],
            "p50_ms": float(np.percentile(values, 50)),
            "p99_ms": float(np.percentile(values, 99)),
        }

    def close(self) -> None:
        self.client.close()


def attacked_window(
    caller: Caller, kind: str, port: int, seconds: float, log: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    command = [sys.executable, str(Path(__file__).resolve()), "--attacker", kind]
    command += ["--port", str(port), "--seconds", str(seconds)]
    if pinning():
        command = ["taskset", "-c", str(CLIENT_CPU), *command]
    with log.open("w") as errors:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            child.wait(30)
            raise SystemExit(f"the {kind} attacker did not start:\n{log.read_text()[-2000:]}")
        measured = caller.window(seconds)
        out, _ = child.communicate(timeout=seconds + 120)
    if child.returncode != 0 or not out.strip():
        raise SystemExit(f"the {kind} attacker failed:\n{log.read_text()[-2000:]}")
    return measured, json.loads(out.strip().splitlines()[-1])


def run_attack(kind: str, args: argparse.Namespace, repo: Path, work: Path) -> list[dict[str, Any]]:
    from server_process import Server

    server = Server(repo, work / f"server-{kind}.log", ["--log-level", "warning", *args.server])
    if pinning():
        server.cmd = ["taskset", "-c", str(SERVER_CPU), *server.cmd]
    server.start()
    rows = []
    try:
        server.wait_ready(60)
        caller = Caller(f"127.0.0.1:{server.grpc_port}")
        caller.window(args.warm)
        for index in range(1, args.rounds + 1):
            for phase in ("quiet", "attack") if index % 2 else ("attack", "quiet"):
                with RssSampler(server.pid) as rss:
                    if phase == "quiet":
                        measured, attacker = caller.window(args.dur), None
                    else:
                        log = work / f"attacker-{kind}-r{index}.log"
                        measured, attacker = attacked_window(
                            caller, kind, server.grpc_port, args.dur, log
                        )
                row = {"attack": kind, "round": index, "phase": phase, **measured}
                row.update(rss_mib=rss.peak / (1 << 20), attacker=attacker)
                rows.append(row)
                print(
                    f"{kind:17} round {index} {phase:6} p50 {measured['p50_ms']:7.2f} ms  "
                    f"p99 {measured['p99_ms']:7.2f} ms  calls {measured['calls']:6}  "
                    f"failures {measured['failures']}"
                    + (f"  attacker: {attacker['first']}" if attacker else ""),
                    flush=True,
                )
                time.sleep(args.gap)
        caller.close()
        if not server.alive():
            raise SystemExit(f"the server died during {kind}:\n{server.log_tail()}")
    finally:
        server.stop()
    return rows


# -- the report ------------------------------------------------------------------------------------


def p99_ratios(rows: list[dict[str, Any]], kind: str) -> list[float]:
    """Per round: the attack window's p99 over the quiet window's next to it."""
    by_round: dict[int, dict[str, float]] = {}
    for row in rows:
        if row["attack"] == kind:
            by_round.setdefault(row["round"], {})[row["phase"]] = row["p99_ms"]
    return [r["attack"] / r["quiet"] for r in by_round.values() if {"attack", "quiet"} <= set(r)]


def outcome_text(attackers: list[dict[str, Any]], kind: str) -> str:
    first = attackers[0]
    if kind == "unfinished":
        counts = ", ".join(f"{n} {name}" for name, n in sorted(first["statuses"].items()))
        return f"calls: {counts} (first round)"
    text = f"first: {first['first']}"
    if first["first_streams"] is not None and kind.startswith("rapid-reset"):
        text += f" (the server took {first['first_streams']} streams)"
    connections = statistics.median(a["connections"] for a in attackers)
    sent_away = statistics.median(a["sent_away"] for a in attackers)
    return f"{text}; per window {connections:,.0f} connections, {sent_away:,.0f} sent away"


def report(rows: list[dict[str, Any]], args: argparse.Namespace, took: float) -> str:
    from machine import cpu_model, git_state

    pinned = (
        f"server on CPU {SERVER_CPU}, the measured client and the attacker on CPU {CLIENT_CPU} "
        f"(taskset; the attacker at nice {ATTACKER_NICE})"
        if pinning()
        else "not pinned (taskset or a second CPU missing): everything shares the cores"
    )
    lines = [
        f"# A second client under HTTP/2 attack: {args.tag} ({time.strftime('%Y-%m-%d')})",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({took / 60:.1f} min)",
        f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}; {pinned}",
        f"- modelport at {git_state()}; python {platform.python_version()}",
        f"- command: `{args.command}`",
        f"- server flags: `{shlex.join(args.server) or '(defaults)'}`",
        "- measured client: tritonclient.grpc, one unary ModelInfer after another on one channel "
        "(mlp FP32 [1, 64] -> [1, 10], made by modelport.examples.onnx_models)",
        f"- {args.rounds} rounds per attack, each a quiet and an attack window of {args.dur:g} s "
        "(the order reversed every other round), a fresh server per attack; attacks in "
        "benchmarks/attacks.py's docstring",
        "",
        "## Results (median over rounds [min-max])",
        "",
        "| attack | quiet p50 / p99 ms | under attack p50 / p99 ms | p99 ratio | "
        "attacker frames / window | outcome | client failures | server RSS max MiB "
        "(quiet / attack) |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for kind in args.attacks:
        quiet = [r for r in rows if r["attack"] == kind and r["phase"] == "quiet"]
        hit = [r for r in rows if r["attack"] == kind and r["phase"] == "attack"]
        if not quiet or not hit:
            continue
        attackers = [r["attacker"] for r in hit]
        rss_quiet = span([r["rss_mib"] for r in quiet], 0)
        rss_hit = span([r["rss_mib"] for r in hit], 0)

        def both(mine: list[dict[str, Any]], first: str, second: str, digits: int = 2) -> str:
            a, b = [r[first] for r in mine], [r[second] for r in mine]
            return f"{span(a, digits)} / {span(b, digits)}"

        lines.append(
            f"| {kind} | {both(quiet, 'p50_ms', 'p99_ms')} | {both(hit, 'p50_ms', 'p99_ms')}"
            f" | {span(p99_ratios(rows, kind), 2)} | {span([a['frames'] for a in attackers], 0)}"
            f" | {outcome_text(attackers, kind)}"
            f" | {sum(r['failures'] for r in quiet + hit)}"
            f" | {rss_quiet} / {rss_hit} |"
        )
    lines += ["", f"## Target: under attack, p99 within {TARGET_RATIO:g}x the quiet p99", ""]
    for kind in args.attacks:
        values = p99_ratios(rows, kind)
        if values:
            met = statistics.median(values) <= TARGET_RATIO
            lines.append(f"- {kind}: {'met' if met else '**NOT met**'} ({span(values, 2)})")
    lines += ["", "## Every window", ""]
    lines += ["| attack | round | phase | calls | p50 ms | p99 ms | failures | RSS max MiB |"]
    lines += ["|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['attack']} | {r['round']} | {r['phase']} | {r['calls']:,} | {r['p50_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {r['failures']} | {r['rss_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], kinds: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    kinds = [k for k in kinds if p99_ratios(rows, k)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(kinds))
    for offset, phase, color in ((-0.2, "quiet", "#4c72b0"), (0.2, "attack", "#c44e52")):
        values = [
            statistics.median(r["p99_ms"] for r in rows if r["attack"] == k and r["phase"] == phase)
            for k in kinds
        ]
        left.bar(x + offset, values, 0.4, color=color, label=phase)
    left.set_xticks(x, kinds, rotation=25, ha="right")
    left.set_ylabel("client p99 ms (median over rounds)")
    left.set_title("ModelInfer p99: quiet vs under attack")
    left.legend()
    ratios = [p99_ratios(rows, k) for k in kinds]
    right.bar(x, [statistics.median(r) for r in ratios], color="#dd8452")
    for index, values in enumerate(ratios):
        right.scatter([index] * len(values), values, color="black", s=10, zorder=3)
    right.axhline(TARGET_RATIO, color="gray", linestyle="--", linewidth=1, label="2x (target)")
    right.set_xticks(x, kinds, rotation=25, ha="right")
    right.set_ylabel("p99 under attack / quiet p99, per round")
    right.set_title("p99 ratio (bars: median)")
    right.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dur", type=float, default=5.0, help="seconds per window")
    parser.add_argument("--warm", type=float, default=2.0)
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between windows")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--server", default="", help="extra `modelport serve` flags, quoted")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--attacker", choices=ATTACKS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attacker:
        attacker_main(args)
        return
    args.command = "python benchmarks/attacks.py " + shlex.join(sys.argv[1:])
    args.attacks = [a for a in args.attacks.split(",") if a]
    unknown = set(args.attacks) - set(ATTACKS)
    if unknown:
        raise SystemExit(f"unknown attacks {sorted(unknown)}; known: {', '.join(ATTACKS)}")
    args.server = shlex.split(args.server)
    if pinning():
        os.sched_setaffinity(0, {CLIENT_CPU})
    work = Path(tempfile.mkdtemp(prefix="attackbench-"))
    repo = make_repo(work)
    rows: list[dict[str, Any]] = []
    started = time.time()
    for kind in args.attacks:
        rows += run_attack(kind, args, repo, work)
    took = time.time() - started
    stem = f"attacks-{time.strftime('%Y-%m-%d')}-{args.tag}"
    args.out.mkdir(parents=True, exist_ok=True)
    (work / "rows.json").write_text(json.dumps(rows, indent=1))
    text = report(rows, args, took)
    (args.out / f"{stem}.md").write_text(text)
    plot(rows, args.attacks, args.out / f"{stem}.png")
    print(text)
    print(f"logs and rows: {work}")


if __name__ == "__main__":
    main()
