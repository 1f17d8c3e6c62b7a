"""Memory and start-up of one server holding BOTH shared-bench models (mlp and cnn): modelport
next to MLServer, side by side in one run.

For each server: start it on a repository with both models, time the start until both answer
correctly, send a short load to each model, then read the resident memory of its whole process
tree: RSS summed over processes (what `ps` shows; shared pages count once per process) and PSS
(shared pages split between the processes that map them, so a tree's PSS is what it really
holds). Needs the shared bench (`bash ../shared/bench/setup.sh mlserver`, its models made).

  .venv/bin/python benchmarks/memory.py --tag s5 [--requests 400]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import cpu_model, git_state, versions  # noqa: E402

PEERS = Path(os.environ.get("PEERS", Path.home() / ".cache" / "modelport-bench"))
BENCH = Path(os.environ.get("BENCH", HERE.parent.parent / "shared" / "bench"))
MODELS = ("mlp", "cnn")
PORT = 18300


def _body(model: str) -> tuple[bytes, np.ndarray]:
    x = np.load(PEERS / "models" / f"{model}.input.npy").astype(np.float32)
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    session = ort.InferenceSession(str(PEERS / "models" / f"{model}.onnx"))
    return json.dumps(body).encode(), session.run(None, {"input": x})[0]


def modelport_command(repo: Path, port: int) -> list[str]:
    for model in MODELS:
        (repo / model / "1").mkdir(parents=True)
        shutil.copy(PEERS / "models" / f"{model}.onnx", repo / model / "1" / "model.onnx")
        shutil.copy(HERE / "configs" / f"bench-{model}.yaml", repo / model / "config.yaml")
    exe = Path(sys.executable).with_name("modelport")
    return [
        str(exe),
        "serve",
        "--model-repository",
        str(repo),
        "--http-port",
        str(port),
        "--grpc-port",
        str(port + 1),
        "--log-level",
        "warning",
    ]


def mlserver_command(repo: Path, port: int) -> list[str]:
    repo.mkdir(parents=True)
    for source in ("mlserver_runtime.py", "ort_common.py"):
        shutil.copy(BENCH / "servers" / source, repo)
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": port + 1,
        "metrics_port": port + 2,
        "parallel_workers": 1,
        "debug": False,
    }
    (repo / "settings.json").write_text(json.dumps(settings))
    for model in MODELS:
        (repo / model).mkdir()
        spec = {"name": model, "implementation": "mlserver_runtime.OrtRuntime"}
        (repo / model / "model-settings.json").write_text(json.dumps(spec))
    return [str(PEERS / "venv-mlserver" / "bin" / "mlserver"), "start", str(repo)]


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def memory_mb(root: int) -> tuple[float, float, int]:
    """(RSS summed, PSS summed, processes) over the tree, in MB."""
    rss = pss = 0
    pids = process_tree(root)
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024, len(pids)


def answers(client: httpx.Client, port: int, model: str, body: bytes, expected: np.ndarray) -> bool:
    try:
        reply = client.post(
            f"http://127.0.0.1:{port}/v2/models/{model}/infer",
            content=body,
            headers={"content-type": "application/json"},
        )
    except httpx.TransportError:
        return False
    if reply.status_code != 200:
        return False
    got = np.asarray(reply.json()["outputs"][0]["data"], dtype=np.float32)
    if not np.allclose(got, expected.ravel(), atol=1e-4, rtol=1e-3):
        raise RuntimeError(f"{model}: wrong answer {got[:4]}")
    return True


def measure(
    name: str, command: list[str], work_dir: Path, requests: int, log: Path, port: int = PORT
) -> dict:
    bodies = {model: _body(model) for model in MODELS}
    started = time.perf_counter()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, cwd=work_dir
        )
    try:
        with httpx.Client(timeout=30) as client:
            pending = set(MODELS)
            while pending:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited; see {log}")
                if time.perf_counter() - started > 120:
                    raise RuntimeError(f"{name} not ready after 120 s; see {log}")
                pending = {m for m in pending if not answers(client, port, m, *bodies[m])}
                if pending:
                    time.sleep(0.05)
            ready_s = time.perf_counter() - started
            idle = memory_mb(process.pid)

            def one(index: int) -> None:
                model = MODELS[index % 2]
                if not answers(client, port, model, *bodies[model]):
                    raise RuntimeError(f"{name}: a request to {model} failed")

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(one, range(requests)))
            loaded = memory_mb(process.pid)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return {
        "server": name,
        "ready_s": ready_s,
        "idle_rss": idle[0],
        "idle_pss": idle[1],
        "rss": loaded[0],
        "pss": loaded[1],
        "processes": loaded[2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="run")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    args = parser.parse_args()
    work = PEERS / "run" / f"memory-{args.tag}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = []
    for repeat in range(args.repeat):
        for name, build in (("modelport", modelport_command), ("mlserver", mlserver_command)):
            command = build(work / f"{name}-{repeat}", PORT)
            row = measure(
                name,
                command,
                work / f"{name}-{repeat}",
                args.requests,
                work / f"{name}-{repeat}.log",
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_report(rows, args)


def write_report(rows: list[dict], args: argparse.Namespace) -> None:
    today = datetime.date.today().isoformat()
    lines = [
        f"# Memory and start-up, both bench models in one server ({today}, tag {args.tag})",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores; modelport {git_state()}; "
        f"versions {versions()}",
        f"- command: `.venv/bin/python benchmarks/memory.py --tag {args.tag} "
        f"--requests {args.requests} --repeat {args.repeat}`",
        "- each server holds mlp and cnn; `ready` = start until both answer correctly; memory "
        f"after {args.requests} requests (8 at a time, alternating models); RSS summed over the "
        "process tree, PSS = shared pages divided among the processes mapping them",
        "",
        "| server | run | processes | ready s | RSS idle MB | PSS idle MB | RSS MB | PSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for index, row in enumerate(rows):
        lines.append(
            f"| {row['server']} | {index // 2 + 1} | {row['processes']} | {row['ready_s']:.2f} | "
            f"{row['idle_rss']:.0f} | {row['idle_pss']:.0f} | {row['rss']:.0f} | {row['pss']:.0f} |"
        )
    ours = [r for r in rows if r["server"] == "modelport"]
    theirs = [r for r in rows if r["server"] == "mlserver"]
    ratio = max(r["pss"] for r in ours) / min(r["pss"] for r in theirs)
    slowest = max(r["ready_s"] for r in ours)
    lines += [
        "",
        f"Worst modelport PSS / best MLServer PSS: {ratio:.2f} (target: at most 0.5); "
        f"slowest modelport start: {slowest:.2f} s (target: 1.5 s).",
    ]
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"memory-{today}-{args.tag}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
