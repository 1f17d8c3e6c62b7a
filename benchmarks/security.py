"""What an API key and TLS cost: mlp at concurrency 32 over REST JSON and gRPC, plain vs API key
vs TLS vs both, in alternating rounds.

Every round starts one `modelport serve` per configuration (the order reverses every other
round) and measures it with two load generators written in C, so that the client's own cost
stays small and equal for all four:

- REST: wrk, 2 threads, 32 keep-alive connections, `benchmarks/wrk_post.lua` posting one v2 JSON
  body to `/v2/models/mlp/infer` (https:// and `-H "Authorization: Bearer KEY"` as configured);
- gRPC: h2load (nghttp2; perf_analyzer cannot send metadata over gRPC), one HTTP/2 connection
  with 32 concurrent streams (as one tritonclient channel), each a unary ModelInfer call with
  the row in `raw_input_contents` (TLS with ALPN h2, and the `authorization` metadata).

h2load sees HTTP statuses only, and a refused gRPC call is HTTP 200 with its status in the
trailers, so every measurement is checked against the server: the model's successful
inference count (`/v2/models/mlp/stats`) must have grown by at least the requests the load
generator counted as answered. One tritonclient call per configuration checks the outputs
against onnxruntime first.

The key is made by `modelport keys add` (scope inference, models 'mlp*'), in a key file that
holds 20 other keys, so the check is the one a real deployment runs. Certificates come from
trustme (a CA and a server certificate for 127.0.0.1).

    python benchmarks/security.py --tag TAG [--rounds 5] [--dur 8] [--warm 2]
        --> benchmarks/results/security-DATE-TAG.md and .png

Needs wrk and h2load (`apt-get install wrk nghttp2-client`) and the shared bench's mlp
(bash ../shared/bench/setup.sh torch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PEERS = Path(os.environ.get("PEERS", Path.home() / ".cache" / "modelport-bench"))
MODELS = PEERS / "models"
MLP_CONFIG = BENCH_DIR / "configs" / "bench-mlp.yaml"
WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"
HOST = "127.0.0.1"
CONFIGS = ("plain", "key", "tls", "key+tls")
LOADERS = ("rest", "grpc")
LOADER_NAMES = {"rest": "REST JSON (wrk)", "grpc": "gRPC (h2load)"}
TARGET_KEY = 0.97  # a key check costs at most 3 %
TARGET_TLS = 0.80  # TLS at most 20 %
OTHER_KEYS = 20
MODELPORT = Path(sys.executable).with_name("modelport")


@dataclass(frozen=True)
class Setup:
    """What every server of the run shares: the repository, the bodies, the key and the certs."""

    work: Path
    repo: Path
    json_body: Path
    grpc_body: Path
    keys_file: Path
    key: str
    stats_key: str
    cert: Path
    private_key: Path
    ca: Path


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def mlp_row() -> np.ndarray:
    return np.load(MODELS / "mlp.input.npy").astype(np.float32).reshape(1, 64)


def make_setup(work: Path) -> Setup:
    import orjson
    import trustme

    # tritonclient's copy of the same messages: ours and its cannot share one process
    from tritonclient.grpc import service_pb2 as pb

    repo = work / "repo"
    (repo / "mlp" / "1").mkdir(parents=True)
    shutil.copy(MODELS / "mlp.onnx", repo / "mlp" / "1" / "model.onnx")
    shutil.copy(MLP_CONFIG, repo / "mlp" / "config.yaml")
    row = mlp_row()
    document = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": row.ravel()}]
    }
    json_body = work / "mlp.json"
    json_body.write_bytes(orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY))
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="input", datatype="FP32")
    tensor.shape.extend([1, 64])
    request.raw_input_contents.append(row.tobytes())
    message = request.SerializeToString()
    grpc_body = work / "mlp.grpc"
    grpc_body.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)

    keys_file = work / "keys.yaml"
    for index in range(OTHER_KEYS):
        add_key(keys_file, f"other-{index}", "inference", f"model-{index}-*")
    key = add_key(keys_file, "bench", "inference", "mlp*")
    stats_key = add_key(keys_file, "stats", "metrics", None)

    authority = trustme.CA()
    issued = authority.issue_cert(HOST, "localhost")
    cert, private_key, ca = work / "server.pem", work / "server.key", work / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    for blob in issued.cert_chain_pems[1:]:
        blob.write_to_path(str(cert), append=True)
    issued.private_key_pem.write_to_path(str(private_key))
    authority.cert_pem.write_to_path(str(ca))
    return Setup(work, repo, json_body, grpc_body, keys_file, key, stats_key, cert, private_key, ca)


def add_key(keys_file: Path, name: str, scope: str, models: str | None) -> str:
    command = [str(MODELPORT), "keys", "add", name, "--api-keys", str(keys_file), "--scope", scope]
    if models is not None:
        command += ["--models", models]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip()


class Server:
    def __init__(self, setup: Setup, config: str, log: Path) -> None:
        self.setup = setup
        self.config = config
        self.http_port, self.grpc_port = free_port(), free_port()
        self.tls = "tls" in config
        self.keyed = "key" in config
        command = [
            str(MODELPORT), "serve", "--model-repository", str(setup.repo), "--host", HOST,
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--log-level", "warning",
        ]  # fmt: skip
        if self.keyed:
            command += ["--api-keys", str(setup.keys_file)]
        if self.tls:
            command += ["--tls-cert", str(setup.cert), "--tls-key", str(setup.private_key)]
        self.command = command
        self.log = log
        scheme = "https" if self.tls else "http"
        self.base = f"{scheme}://{HOST}:{self.http_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("w") as out:
            out.write(f"$ {shlex.join(self.command)}\n")
            out.flush()
            self.proc = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.config}: the server exited:\n{self.log.read_text()}")
            try:
                if self.client().get("/v2/health/ready").status_code == 200:
                    return
            except Exception:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.config}: not ready after 60 s:\n{self.log.read_text()}")

    def client(self) -> Any:
        import httpx

        return httpx.Client(base_url=self.base, verify=str(self.setup.ca), timeout=10)

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.setup.key}"} if self.keyed else {}

    def successes(self) -> int:
        with self.client() as client:
            answer = client.get("/v2/models/mlp/stats", headers=self.headers(self.setup.stats_key))
        answer.raise_for_status()
        return int(answer.json()["model_stats"][0]["inference_stats"]["success"]["count"])

    def check_outputs(self) -> float:
        """One inference over each protocol with real clients; the largest difference from
        onnxruntime."""
        import onnxruntime as ort
        import tritonclient.grpc as grpcclient

        row = mlp_row()
        expected = ort.InferenceSession(str(MODELS / "mlp.onnx")).run(None, {"input": row})[0]
        with self.client() as client:
            answer = client.post(
                "/v2/models/mlp/infer",
                content=self.setup.json_body.read_bytes(),
                headers={"Content-Type": "application/json", **self.headers()},
            )
        answer.raise_for_status()
        rest = np.asarray(answer.json()["outputs"][0]["data"], dtype=np.float32)
        grpc = grpcclient.InferenceServerClient(
            f"{HOST}:{self.grpc_port}",
            ssl=self.tls,
            root_certificates=str(self.setup.ca) if self.tls else None,
        )
        tensor = grpcclient.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(row)
        metadata = {name.lower(): value for name, value in self.headers().items()}
        result = grpc.infer("mlp", [tensor], headers=metadata)
        grpc.close()
        got = result.as_numpy("output")
        assert got is not None
        return float(max(np.max(np.abs(rest - expected.ravel())), np.max(np.abs(got - expected))))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def run_wrk(server: Server, seconds: float, log: Path) -> dict[str, Any]:
    command = ["wrk", "-t2", "-c32", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    command += ["-s", str(WRK_SCRIPT)]
    for name, value in server.headers().items():
        command += ["-H", f"{name}: {value}"]
    command.append(f"{server.base}/v2/models/mlp/infer")
    env = dict(os.environ, BODY_FILE=str(server.setup.json_body))
    text = run_logged(command, log, seconds + 30, env)
    lines = [line for line in text.splitlines() if line.startswith("WRK_RESULT ")]
    if not lines:
        raise SystemExit(f"wrk printed no result:\n{text[-2000:]}")
    result = json.loads(lines[-1].removeprefix("WRK_RESULT "))
    errors = sum(result[k] for k in result if k.startswith("err_"))
    return {
        "answered": result["requests"] - errors,
        "per_s": (result["requests"] - errors) / (result["duration_us"] / 1e6),
        "p50_ms": result["p50_us"] / 1e3,
        "p99_ms": result["p99_us"] / 1e3,
        "errors": errors,
        "command": shlex.join(command).replace(server.setup.key, "KEY"),
    }


H2LOAD_FINISHED = re.compile(r"finished in ([\d.]+)s, ([\d.]+) req/s")
H2LOAD_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded")
H2LOAD_LATENCY = re.compile(
    r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)"
)
UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_h2load(server: Server, seconds: float, warm: float, log: Path) -> dict[str, Any]:
    scheme = "https" if server.tls else "http"
    command = ["h2load", "-c1", "-m32", "-t1", f"-D{max(1, round(seconds))}"]
    command += [f"--warm-up-time={max(1, round(warm))}", "-d", str(server.setup.grpc_body)]
    command += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    for name, value in server.headers().items():
        command += ["-H", f"{name.lower()}: {value}"]
    url = f"{scheme}://{HOST}:{server.grpc_port}/inference.GRPCInferenceService/ModelInfer"
    command.append(url)
    text = run_logged(command, log, seconds + warm + 30, None)
    finished, counts = H2LOAD_FINISHED.search(text), H2LOAD_REQUESTS.search(text)
    latency = H2LOAD_LATENCY.search(text)
    if finished is None or counts is None or latency is None:
        raise SystemExit(f"h2load printed no result:\n{text[-2000:]}")
    succeeded = int(counts.group(4))
    return {
        "answered": succeeded,
        "per_s": float(finished.group(2)),
        "mean_ms": float(latency.group(5)) * UNIT_MS[latency.group(6)],
        "max_ms": float(latency.group(3)) * UNIT_MS[latency.group(4)],
        "errors": int(counts.group(1)) - succeeded,
        "command": shlex.join(command).replace(server.setup.key, "KEY"),
    }


def run_logged(command: list[str], log: Path, timeout: float, env: dict[str, str] | None) -> str:
    with log.open("w") as out:
        out.write("$ " + shlex.join(command).replace("Bearer ", "Bearer <key> #") + "\n")
        out.flush()
        done = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, env=env
        )
    text = log.read_text()
    if done.returncode != 0:
        raise SystemExit(f"{command[0]} exited {done.returncode}:\n{text[-2000:]}")
    return text


def measure(
    setup: Setup, config: str, index: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    logs = setup.work / "logs"
    logs.mkdir(exist_ok=True)
    server = Server(setup, config, logs / f"server-{config}-r{index}.log")
    rows = []
    server.start()
    try:
        max_err = server.check_outputs()
        for loader in LOADERS:
            before = server.successes()
            log = logs / f"{loader}-{config}-r{index}.log"
            if loader == "rest":
                # wrk has no warm-up of its own: a short run first
                run_wrk(server, args.warm, log.with_suffix(".warm.log"))
                before = server.successes()
                result = run_wrk(server, args.dur, log)
            else:
                result = run_h2load(server, args.dur, args.warm, log)
            served = server.successes() - before
            if served < result["answered"]:
                raise SystemExit(
                    f"{config} {loader}: the load generator counted {result['answered']} answers "
                    f"but the server ran {served} inferences (refused calls?); see {log}"
                )
            rows.append(
                {
                    "round": index, "config": config, "loader": loader, "max_abs_err": max_err,
                    "load1": os.getloadavg()[0], **result,
                }
            )  # fmt: skip
            print(
                f"round {index} {config:8} {loader:5} {result['per_s']:9,.0f}/s  "
                f"errors {result['errors']}  load1 {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    finally:
        server.stop()
    return rows


def span(values: list[float], digits: int = 0) -> str:
    low, high = min(values), max(values)
    return f"{statistics.median(values):,.{digits}f} [{low:,.{digits}f}-{high:,.{digits}f}]"


def ratios(rows: list[dict[str, Any]], loader: str, config: str, base: str) -> list[float]:
    """Per round: config's throughput over base's (measured next to each other)."""
    by_round: dict[int, dict[str, float]] = {}
    for row in rows:
        if row["loader"] == loader:
            by_round.setdefault(row["round"], {})[row["config"]] = row["per_s"]
    return [r[config] / r[base] for r in by_round.values() if config in r and base in r]


def report(rows: list[dict[str, Any]], args: argparse.Namespace, took: float) -> str:
    import importlib.metadata as md

    sys.path.insert(0, str(BENCH_DIR))
    from machine import cpu_model

    lines = [
        f"# What an API key and TLS cost: {args.tag} ({time.strftime('%Y-%m-%d')})",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({took / 60:.1f} min)",
        f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}; server and "
        "load generator share the cores",
        f"- modelport {md.version('modelport')} at {args.git}; python {platform.python_version()}",
        f"- command: `{args.command}`",
        "- model: the shared bench mlp (FP32 [1, 64] -> [1, 10]), "
        "`benchmarks/configs/bench-mlp.yaml` (dynamic batching up to 32, 1 intra-op thread), "
        "one row per request",
        f"- {args.rounds} rounds; odd rounds run {', '.join(CONFIGS)}, even rounds the reverse; "
        f"each configuration is a fresh server; every measurement: {args.warm:g} s warm-up, then "
        f"{args.dur:g} s at 32 in flight",
        "- configurations: `plain`; `key`: `--api-keys FILE` (22 keys; the client's has scope "
        "inference and models 'mlp*'), `Authorization: Bearer KEY` on every request; `tls`: "
        "`--tls-cert/--tls-key` (a trustme certificate), the TLS version the clients "
        "negotiate; `key+tls`: both",
        "- REST: wrk, 2 threads, 32 keep-alive connections, v2 JSON; gRPC: h2load, one HTTP/2 "
        "connection, 32 concurrent unary ModelInfer streams (raw_input_contents). Each "
        "measurement is checked against the model's success count in `/v2/models/mlp/stats`.",
        "",
        "## Results (median over rounds [min-max])",
        "",
        "| loader | configuration | requests/s | latency ms | vs plain (per round) | errors |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for loader in LOADERS:
        for config in CONFIGS:
            mine = [r for r in rows if r["loader"] == loader and r["config"] == config]
            if not mine:
                continue
            if loader == "rest":
                p50, p99 = [r["p50_ms"] for r in mine], [r["p99_ms"] for r in mine]
                latency = f"p50 {span(p50, 2)}, p99 {span(p99, 2)}"
            else:
                latency = f"mean {span([r['mean_ms'] for r in mine], 2)}"
            versus = "1" if config == "plain" else span(ratios(rows, loader, config, "plain"), 3)
            lines.append(
                f"| {LOADER_NAMES[loader]} | {config} | {span([r['per_s'] for r in mine])} | "
                f"{latency} | {versus} | {sum(r['errors'] for r in mine)} |"
            )
    lines += ["", "## Targets", ""]
    for loader in LOADERS:
        for config, base, target, what in (
            ("key", "plain", TARGET_KEY, "an API key costs at most 3 %"),
            ("key+tls", "tls", TARGET_KEY, "an API key under TLS costs at most 3 %"),
            ("tls", "plain", TARGET_TLS, "TLS costs at most 20 %"),
            ("key+tls", "plain", TARGET_TLS, "TLS and a key together cost at most 20 %"),
        ):
            values = ratios(rows, loader, config, base)
            if not values:
                continue
            median = statistics.median(values)
            verdict = "met" if median >= target else "**NOT met**"
            lines.append(
                f"- {LOADER_NAMES[loader]}, {what} ({config} / {base} >= {target:g}): {verdict}: "
                f"{span(values, 3)}"
            )
    lines += ["", "## Every measurement", ""]
    lines += ["| round | loader | configuration | requests/s | errors | load1 |"]
    lines += ["|---:|---|---|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['round']} | {row['loader']} | {row['config']} | {row['per_s']:,.0f} | "
            f"{row['errors']} | {row['load1']:.2f} |"
        )
    worst = max(r["max_abs_err"] for r in rows)
    lines += ["", f"Largest difference of a checked output from onnxruntime: {worst:.2e}.", ""]
    lines += ["Commands (one round, the key shown as KEY):", ""]
    seen = set()
    for row in rows:
        if (row["loader"], row["config"]) not in seen:
            seen.add((row["loader"], row["config"]))
            lines.append(f"- `{row['command']}`")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, loader in zip(axes, LOADERS, strict=True):
        configs = [c for c in CONFIGS if c != "plain"]
        values = [ratios(rows, loader, c, "plain") for c in configs]
        medians = [statistics.median(v) if v else 0 for v in values]
        axis.bar(configs, medians, color=["#4c72b0", "#dd8452", "#c44e52"])
        for x, v in enumerate(values):
            axis.scatter([x] * len(v), v, color="black", s=10, zorder=3)
        axis.axhline(
            TARGET_KEY, color="gray", linestyle="--", linewidth=1, label="0.97 (key target)"
        )
        axis.axhline(
            TARGET_TLS, color="gray", linestyle=":", linewidth=1, label="0.80 (TLS target)"
        )
        axis.set_title(f"{LOADER_NAMES[loader]}: throughput vs plain")
        axis.set_ylim(0.5, 1.1)
    axes[0].set_ylabel("ratio to plain, per round (bars: median)")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle("mlp at 32 in flight: API key and TLS cost")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dur", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--warm", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args()
    args.command = "python benchmarks/security.py " + shlex.join(sys.argv[1:])
    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y wrk nghttp2-client")
    sys.path.insert(0, str(BENCH_DIR))
    from machine import git_state

    args.git = git_state()
    work = Path(tempfile.mkdtemp(prefix="secbench-"))
    setup = make_setup(work)
    rows: list[dict[str, Any]] = []
    started = time.time()
    for index in range(1, args.rounds + 1):
        for config in CONFIGS if index % 2 else CONFIGS[::-1]:
            rows.extend(measure(setup, config, index, args))
    took = time.time() - started
    stem = f"security-{time.strftime('%Y-%m-%d')}-{args.tag}"
    args.out.mkdir(parents=True, exist_ok=True)
    (work / "rows.json").write_text(json.dumps(rows, indent=1))
    text = report(rows, args, took)
    (args.out / f"{stem}.md").write_text(text)
    plot(rows, args.out / f"{stem}.png")
    print(text)
    print(f"logs and rows: {work}")


if __name__ == "__main__":
    main()
