"""modelport on Ray Serve next to the shared bench's plain Ray Serve deployment and modelport
alone: the shared bench's mlp at concurrency 32 over REST JSON (wrk), in alternating rounds.

Configurations (each round starts every one fresh, in an order that reverses every other round):

- `modelport-ray-proxy`: `modelport ray serve --replicas 1 --num-cpus 2` behind Ray's HTTP proxy;
- `modelport-ray-haproxy`: the same with `--ingress haproxy` (Ray's HAProxy + direct ingress);
- `plain-ray-proxy`: `../shared/bench/servers/ray_app.py` (one replica, Ray's HTTP proxy, as the
  shared bench ran it: `POST /predict {"data": [[...]]}`);
- `plain-ray-haproxy`: the same script with Ray's HAProxy switches in its environment, so both
  Ray deployments are also compared on the same ingress;
- `modelport`: `modelport serve`, one process.

Every server gets the same model file and the same 2 CPUs (a local Ray with `num_cpus=2`, one
replica of the model); modelport uses `benchmarks/configs/bench-mlp.yaml` (batching up to 32,
1 intra-op thread) everywhere, the plain deployment its own defaults (ORT_THREADS=2, no
batching). Each server's answer is checked against the bench's expected output before and
after its load. wrk: 2 threads, 32 keep-alive connections, `benchmarks/wrk_post.lua`.

    python benchmarks/ray_serve.py --tag TAG [--rounds 3] [--dur 10] [--warm 3]
        [--configs modelport-ray-proxy,plain-ray-proxy,...]
        --> benchmarks/results/ray-serve-DATE-TAG.md and .png

Needs wrk (`apt-get install wrk`), the shared bench's models (`bash ../shared/bench/setup.sh
torch`), and the `ray` extra. The plain deployment runs with `$PEERS/venv-ray/bin/python`
(`bash ../shared/bench/setup.sh ray`, ray[serve]==2.60.0) when that exists, else with this
checkout's Python (which has the same Ray through the `ray` extra); the report says which.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PEERS = Path(os.environ.get("PEERS", Path.home() / ".cache" / "modelport-bench"))
MODELS = PEERS / "models"
SHARED_BENCH = Path(os.environ.get("BENCH", ROOT.parent / "shared" / "bench"))
RAY_APP = SHARED_BENCH / "servers" / "ray_app.py"
MLP_CONFIG = BENCH_DIR / "configs" / "bench-mlp.yaml"
WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"
HOST = "127.0.0.1"
MODELPORT = Path(sys.executable).with_name("modelport")
CONFIGS = (
    "modelport-ray-proxy",
    "modelport-ray-haproxy",
    "plain-ray-proxy",
    "plain-ray-haproxy",
    "modelport",
)
TARGET = 3.0  # modelport on Ray Serve: at least 3x the plain Ray Serve deployment
START_TIMEOUT = 240.0
HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
}
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # replicas behind HAProxy wait 30 s for load balancers when stopping; none here
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def plain_python() -> Path:
    venv = PEERS / "venv-ray" / "bin" / "python"
    return venv if venv.exists() else Path(sys.executable)


@dataclass
class Setup:
    work: Path
    repo: Path
    v2_body: Path
    plain_body: Path
    row: np.ndarray
    expected: np.ndarray


def make_setup(work: Path) -> Setup:
    import orjson

    repo = work / "repo"
    (repo / "mlp" / "1").mkdir(parents=True)
    shutil.copy(MODELS / "mlp.onnx", repo / "mlp" / "1" / "model.onnx")
    shutil.copy(MLP_CONFIG, repo / "mlp" / "config.yaml")
    (work / "ray-options.yaml").write_text("default: {ray_actor_options: {num_cpus: 1}}\n")
    row = np.load(MODELS / "mlp.input.npy").astype(np.float32).reshape(1, 64)
    expected = np.load(MODELS / "mlp.expected.npy").astype(np.float32).reshape(1, -1)
    v2 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": row.ravel()}]}
    v2_body, plain_body = work / "mlp-v2.json", work / "mlp-plain.json"
    v2_body.write_bytes(orjson.dumps(v2, option=orjson.OPT_SERIALIZE_NUMPY))
    plain_body.write_bytes(orjson.dumps({"data": row.tolist()}))
    return Setup(work, repo, v2_body, plain_body, row, expected)


@dataclass
class Server:
    setup: Setup
    config: str
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    ray_tmp: Path | None = None

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def plain(self) -> bool:
        return self.config.startswith("plain")

    @property
    def path(self) -> str:
        return "/predict" if self.plain else "/v2/models/mlp/infer"

    @property
    def body(self) -> Path:
        return self.setup.plain_body if self.plain else self.setup.v2_body

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        env = dict(os.environ, NO_COLOR="1")
        cwd = ROOT
        if self.config == "modelport":
            command = [str(MODELPORT), "serve", "--model-repository", str(self.setup.repo)]
            command += ["--http-port", str(self.port), "--grpc-port", str(free_port())]
            command += ["--no-access-log", "--log-level", "warning"]
            return command, env, cwd
        # Ray's socket paths must stay short: a fresh directory right under /tmp
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="mprb-", dir="/tmp"))
        env.update(RAY_ENV, RAY_TMPDIR=str(self.ray_tmp))
        haproxy = self.config.endswith("haproxy")
        if self.plain:
            if haproxy:
                env.update(HAPROXY_ENV)
                base = self.ray_tmp / "hap"
                env.update(
                    RAY_SERVE_HAPROXY_CONFIG_FILE_LOC=str(base / "haproxy.cfg"),
                    RAY_SERVE_HAPROXY_SOCKET_PATH=str(base / "admin.sock"),
                    RAY_SERVE_HAPROXY_SERVER_STATE_BASE=str(base),
                    RAY_SERVE_HAPROXY_SERVER_STATE_FILE=str(base / "server-state"),
                )
            env.update(MODEL="mlp", PORT=str(self.port), PEERS=str(PEERS))
            return [str(plain_python()), RAY_APP.name], env, RAY_APP.parent
        command = [str(MODELPORT), "ray", "serve", "--model-repository", str(self.setup.repo)]
        command += ["--replicas", "1", "--num-cpus", "2", "--http-port", str(self.port)]
        command += ["--ray-options", str(self.setup.work / "ray-options.yaml")]
        command += ["--no-access-log", "--log-level", "warning"]
        command += ["--ingress", "haproxy" if haproxy else "proxy"]
        return command, env, cwd

    def start(self) -> None:
        command, env, cwd = self.command()
        with self.log.open("wb") as sink:
            sink.write(f"$ {shlex.join(command)}\n".encode())
            sink.flush()
            self.process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.config} exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, IndexError):
                self.check_output()
                return
            time.sleep(0.5)
        raise SystemExit(f"{self.config} gave no correct answer in {START_TIMEOUT:g} s: {self.log}")

    def check_output(self) -> float:
        """The largest difference of the answer from the bench's expected output."""
        answer = httpx.post(self.base + self.path, content=self.body.read_bytes(), timeout=10)
        answer.raise_for_status()
        document = answer.json()
        if self.plain:
            got = np.asarray(document["output"], dtype=np.float32).reshape(1, -1)
        else:
            got = np.asarray(document["outputs"][0]["data"], dtype=np.float32).reshape(1, -1)
        error = float(np.max(np.abs(got - self.setup.expected)))
        if error > 1e-3:
            raise SystemExit(
                f"{self.config} answered {got} where {self.setup.expected} is expected"
            )
        return error

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=90)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # what of Ray outlived its driver
        process.wait()
        if self.ray_tmp is not None:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)


def run_wrk(server: Server, seconds: float, log: Path) -> dict[str, Any]:
    command = ["wrk", "-t2", "-c32", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    command += ["-s", str(WRK_SCRIPT), server.base + server.path]
    env = dict(os.environ, BODY_FILE=str(server.body))
    with log.open("w") as out:
        out.write("$ " + shlex.join(command) + "\n")
        out.flush()
        done = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, timeout=seconds + 60, env=env
        )
    text = log.read_text()
    lines = [line for line in text.splitlines() if line.startswith("WRK_RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"wrk failed:\n{text[-2000:]}")
    result = json.loads(lines[-1].removeprefix("WRK_RESULT "))
    errors = sum(result[k] for k in result if k.startswith("err_"))
    return {
        "per_s": (result["requests"] - errors) / (result["duration_us"] / 1e6),
        "p50_ms": result["p50_us"] / 1e3,
        "p99_ms": result["p99_us"] / 1e3,
        "errors": errors,
        "command": shlex.join(command),
    }


def measure(setup: Setup, config: str, index: int, args: argparse.Namespace) -> dict[str, Any]:
    logs = setup.work / "logs"
    logs.mkdir(exist_ok=True)
    server = Server(setup, config, logs / f"server-{config}-r{index}.log")
    started = time.monotonic()
    try:
        server.start()
        start_s = time.monotonic() - started
        run_wrk(server, args.warm, logs / f"wrk-{config}-r{index}.warm.log")
        result = run_wrk(server, args.dur, logs / f"wrk-{config}-r{index}.log")
        max_err = server.check_output()
    finally:
        server.stop()
    row = {
        "round": index, "config": config, "start_s": start_s, "max_abs_err": max_err,
        "load1": os.getloadavg()[0], "server_log": str(server.log), **result,
    }  # fmt: skip
    print(
        f"round {index} {config:22} {result['per_s']:9,.0f}/s  p99 {result['p99_ms']:7.1f} ms  "
        f"errors {result['errors']}  started in {start_s:.0f} s",
        flush=True,
    )
    return row


def span(values: list[float], digits: int = 0) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{statistics.median(values):,.{digits}f} [{low:,.{digits}f}-{high:,.{digits}f}]"


def ratios(rows: list[dict[str, Any]], config: str, base: str) -> list[float]:
    """Per round: config's throughput over base's (measured in the same round)."""
    by_round: dict[int, dict[str, float]] = {}
    for row in rows:
        by_round.setdefault(row["round"], {})[row["config"]] = row["per_s"]
    return [r[config] / r[base] for r in by_round.values() if config in r and base in r]


def server_command(config: str, setup: Setup) -> str:
    """How to start `config` by hand (WORK: the run's temporary directory)."""
    if config.startswith("plain"):
        switches = "".join(f"{k}=1 " for k in HAPROXY_ENV) if config.endswith("haproxy") else ""
        return (
            f"cd ../shared/bench/servers && {switches}MODEL=mlp PORT=8000 "
            f"{plain_python()} ray_app.py"
        )
    server = Server(setup, config, setup.work / "unused.log", port=8000)
    command, _, _ = server.command()
    if server.ray_tmp is not None:
        shutil.rmtree(server.ray_tmp, ignore_errors=True)
    return shlex.join(command).replace(str(setup.work), "WORK").replace(str(ROOT) + "/", "")


def report(rows: list[dict[str, Any]], args: argparse.Namespace, setup: Setup, took: float) -> str:
    import importlib.metadata as md

    sys.path.insert(0, str(BENCH_DIR))
    from machine import cpu_model

    configs = [c for c in CONFIGS if any(r["config"] == c for r in rows)]
    lines = [
        f"# modelport on Ray Serve vs a plain Ray Serve deployment: {args.tag} "
        f"({time.strftime('%Y-%m-%d')})",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({took / 60:.1f} min)",
        f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}; servers, Ray "
        "and the load generator share the cores",
        f"- modelport {md.version('modelport')} at {args.git}; ray {md.version('ray')}; python "
        f"{platform.python_version()}; plain deployment run by {plain_python()}",
        f"- command: `{args.command}`",
        "- model: the shared bench mlp (FP32 [1, 64] -> [1, 10]); modelport with "
        "`benchmarks/configs/bench-mlp.yaml` (dynamic batching up to 32, 1 intra-op thread); "
        "the plain deployment as the shared bench runs it (ORT_THREADS 2, no batching)",
        "- one replica of the model everywhere, on a local Ray with 2 CPUs (`modelport ray serve "
        "--replicas 1 --num-cpus 2`; ray_app.py: `num_replicas=1`, `ray.init(num_cpus=2)`)",
        f"- {args.rounds} rounds; odd rounds run {', '.join(configs)}, even rounds the reverse; "
        f"each configuration is a fresh server (and a fresh Ray); every measurement: "
        f"{args.warm:g} s warm-up, then {args.dur:g} s of wrk (2 threads, 32 keep-alive "
        "connections, one row per request, JSON)",
        "- every server's answer is checked against the bench's expected output before and after "
        "its load",
        "",
        "## Results (median over rounds [min-max])",
        "",
        "| configuration | requests/s | p50 ms | p99 ms | errors | start s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for config in configs:
        mine = [r for r in rows if r["config"] == config]
        lines.append(
            f"| {config} | {span([r['per_s'] for r in mine])} | "
            f"{span([r['p50_ms'] for r in mine], 2)} | {span([r['p99_ms'] for r in mine], 1)} | "
            f"{sum(r['errors'] for r in mine)} | {span([r['start_s'] for r in mine])} |"
        )
    lines += ["", "## Ratios (per round)", ""]
    pairs = [
        ("modelport-ray-proxy", "plain-ray-proxy", "both behind Ray's HTTP proxy"),
        ("modelport-ray-haproxy", "plain-ray-haproxy", "both behind Ray's HAProxy ingress"),
        ("modelport-ray-haproxy", "plain-ray-proxy", "each as deployed by default / by its docs"),
        ("modelport-ray-proxy", "modelport", "Ray's proxy vs modelport alone"),
        ("modelport-ray-haproxy", "modelport", "Ray's HAProxy vs modelport alone"),
    ]
    for config, base, what in pairs:
        values = ratios(rows, config, base)
        if not values:
            continue
        verdict = ""
        if base.startswith("plain"):
            met = statistics.median(values) >= TARGET
            verdict = f" (target >= {TARGET:g}x: {'met' if met else '**NOT met**'})"
        lines.append(f"- {config} / {base}, {what}: {span(values, 2)}{verdict}")
    lines += ["", "## Every measurement", ""]
    lines += ["| round | configuration | requests/s | p99 ms | errors | load1 |"]
    lines += ["|---:|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['round']} | {row['config']} | {row['per_s']:,.0f} | {row['p99_ms']:.1f} | "
            f"{row['errors']} | {row['load1']:.2f} |"
        )
    worst = max(r["max_abs_err"] for r in rows)
    lines += ["", f"Largest difference of a checked output from the expected one: {worst:.2e}."]
    lines += ["", "Servers (WORK: the run's temporary directory) and load:", ""]
    for config in configs:
        lines.append(f"- {config}: `{server_command(config, setup)}`")
    lines.append(
        f"- load: `{rows[0]['command'].replace(str(setup.work), 'WORK')}` (path per server)"
    )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], out: Path, tag: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = [c for c in CONFIGS if any(r["config"] == c for r in rows)]
    values = [[r["per_s"] for r in rows if r["config"] == c] for c in configs]
    fig, axis = plt.subplots(figsize=(9, 4.5))
    colors = ["#4c72b0" if c.startswith("modelport-ray") else "#dd8452" for c in configs]
    colors = [
        ("#55a868" if c == "modelport" else color) for c, color in zip(configs, colors, strict=True)
    ]
    axis.bar(configs, [statistics.median(v) for v in values], color=colors)
    for x, v in enumerate(values):
        axis.scatter([x] * len(v), v, color="black", s=10, zorder=3)
    axis.set_ylabel("requests/s (bars: median over rounds; dots: rounds)")
    axis.set_title(f"mlp at 32 in flight, one replica, 2 CPUs ({tag})")
    axis.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dur", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warm", type=float, default=3.0)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args()
    args.command = "python benchmarks/ray_serve.py " + shlex.join(sys.argv[1:])
    chosen = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"unknown configurations {unknown}; known: {', '.join(CONFIGS)}")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    for needed in (MODELS / "mlp.onnx", RAY_APP):
        if not needed.exists():
            raise SystemExit(f"{needed} is missing: bash ../shared/bench/setup.sh torch")
    sys.path.insert(0, str(BENCH_DIR))
    from machine import git_state

    args.git = git_state()
    work = Path(tempfile.mkdtemp(prefix="raybench-"))
    setup = make_setup(work)
    rows: list[dict[str, Any]] = []
    started = time.time()
    for index in range(1, args.rounds + 1):
        for config in chosen if index % 2 else chosen[::-1]:
            rows.append(measure(setup, config, index, args))
    took = time.time() - started
    stem = f"ray-serve-{time.strftime('%Y-%m-%d')}-{args.tag}"
    args.out.mkdir(parents=True, exist_ok=True)
    (work / "rows.json").write_text(json.dumps(rows, indent=1))
    text = report(rows, args, setup, took)
    (args.out / f"{stem}.md").write_text(text)
    plot(rows, args.out / f"{stem}.png", args.tag)
    print(text)
    print(f"logs and rows: {work}")


if __name__ == "__main__":
    main()
