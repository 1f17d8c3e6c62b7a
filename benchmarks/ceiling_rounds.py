"""cnn served by modelport against the in-process onnxruntime ceiling, in alternating rounds.

On a shared 2-core VM the ceiling itself moves by 15-25 % within minutes, so a ratio to a ceiling
measured once, minutes before the server, says as much about the neighbours as about the server.
Here each round measures the ceiling (raw_ort.py: 1 process x 2 threads and 2 processes x 1
thread, batch 1 and 8), then modelport at concurrency 32 over gRPC and HTTP binary
(perf_analyzer, through the shared bench's compare.py), and the next round's ceiling closes the
bracket. A round's ratio divides by the higher of the two ceilings around it (the strict
reading); the table gives every round and the median.

    python benchmarks/ceiling_rounds.py --tag TAG [--rounds 5] [--dur 5]
        --> benchmarks/results/ceiling-DATE-TAG.md and .png
Needs the shared bench's venvs: bash ../shared/bench/setup.sh torch perf
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from machine import BENCH, BENCH_PYTHON, PEERS, cpu_model, git_state

ROOT = Path(__file__).resolve().parent.parent
LOADERS = ("pa-grpc", "pa-http")
LOADER_NAMES = {"pa-grpc": "gRPC", "pa-http": "HTTP binary"}


def measure_ceiling(path: Path, seconds: float) -> float:
    """Best inferences/s of raw onnxruntime over the two ceiling shapes and batch 1 and 8."""
    subprocess.run(
        [str(BENCH_PYTHON), "raw_ort.py", "--seconds", str(seconds), "--models", "cnn",
         "--batches", "1,8", "--cfgs", "t2,2p1t", "--json", str(path)],
        cwd=BENCH, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return max(float(row["ips"]) for row in json.loads(path.read_text())["results"])


def measure_server(tag: str, dur: float) -> dict[str, float]:
    """modelport on cnn at concurrency 32, one run per loader: {loader: inferences/s}."""
    env = dict(
        os.environ,
        MODELPORT=str(ROOT / ".venv" / "bin" / "modelport"),
        MODELPORT_CONFIG=str(ROOT / "benchmarks" / "configs" / "bench-cnn.yaml"),
        MODELPORT_BATCH="8",
    )
    subprocess.run(
        [str(BENCH_PYTHON), "compare.py", "--servers", "modelport", "--models", "cnn",
         "--conc", "32", "--loaders", ",".join(LOADERS), "--dur", str(dur), "--warm", "1",
         "--tag", tag],
        cwd=BENCH, env=env, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    found: dict[str, float] = {}
    with (PEERS / "results" / "results.jsonl").open() as results:
        for line in results:
            row = json.loads(line)
            if row.get("tag") == tag and row["server"] == "modelport":
                found[row["loader"]] = float(row["rps"])
    missing = set(LOADERS) - set(found)
    if missing:
        raise SystemExit(f"compare.py left no result for {sorted(missing)} under tag {tag}")
    return found


def report(tag: str, ceilings: list[float], served: list[dict[str, float]], dur: float) -> str:
    lines = [
        f"# cnn against the in-process ceiling, alternating rounds ({time.strftime('%Y-%m-%d')})",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}; the server "
        "and perf_analyzer share the cores",
        f"- modelport at commit {git_state()}, `benchmarks/configs/bench-cnn.yaml`, one worker",
        f"- command: `python benchmarks/ceiling_rounds.py --tag {tag} --rounds {len(served)} "
        f"--dur {dur:g}`",
        "- ceiling = best of raw_ort.py's 1 process x 2 threads and 2 processes x 1 thread at "
        "batch 1 and 8; a round's ratio divides by the higher ceiling of the two around it",
        "",
        "| round | ceiling before | ceiling after | "
        + " | ".join(f"{LOADER_NAMES[name]} inf/s | ratio" for name in LOADERS)
        + " |",
        "|---:|---:|---:|" + "---:|---:|" * len(LOADERS),
    ]
    ratios: dict[str, list[float]] = {name: [] for name in LOADERS}
    for index, result in enumerate(served):
        bracket = max(ceilings[index], ceilings[index + 1])
        cells = []
        for name in LOADERS:
            ratios[name].append(result[name] / bracket)
            cells.append(f"{result[name]:,.0f} | {result[name] / bracket:.3f}")
        lines.append(
            f"| {index + 1} | {ceilings[index]:,.0f} | {ceilings[index + 1]:,.0f} | "
            + " | ".join(cells)
            + " |"
        )
    medians = " | ".join(f"| **{statistics.median(ratios[name]):.3f}**" for name in LOADERS)
    lines.append(f"| median | {statistics.median(ceilings):,.0f} | | {medians} |")
    return "\n".join(lines) + "\n"


def plot(ceilings: list[float], served: list[dict[str, float]], out: Path) -> None:
    figure, axis = plt.subplots(figsize=(8, 4))
    axis.plot([r + 0.5 for r in range(len(ceilings))], ceilings, "k--o", label="raw ORT ceiling")
    for name in LOADERS:
        axis.plot(
            [r + 1 for r in range(len(served))],
            [result[name] for result in served],
            "-o",
            label=f"modelport {LOADER_NAMES[name]}",
        )
    axis.set_xlabel("round (ceiling measured between rounds)")
    axis.set_ylabel("inferences/s, cnn, concurrency 32")
    axis.set_ylim(bottom=0)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dur", type=float, default=5.0, help="seconds per server measurement")
    parser.add_argument("--ceiling-seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if not BENCH_PYTHON.exists():
        raise SystemExit(f"{BENCH_PYTHON} is missing: bash {BENCH}/setup.sh torch perf")
    raw_dir = PEERS / "results"
    ceilings = [measure_ceiling(raw_dir / f"ceiling_{args.tag}_0.json", args.ceiling_seconds)]
    served = []
    for index in range(1, args.rounds + 1):
        served.append(measure_server(f"{args.tag}-r{index}", args.dur))
        path = raw_dir / f"ceiling_{args.tag}_{index}.json"
        ceilings.append(measure_ceiling(path, args.ceiling_seconds))
        shown = ", ".join(f"{name} {served[-1][name]:,.0f}" for name in LOADERS)
        print(f"round {index}/{args.rounds}: ceiling {ceilings[-2]:,.0f} -> {ceilings[-1]:,.0f}; "
              f"{shown}", flush=True)  # fmt: skip
    text = report(args.tag, ceilings, served, args.dur)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"ceiling-{time.strftime('%Y-%m-%d')}-{args.tag}"
    (args.out / f"{stem}.md").write_text(text)
    plot(ceilings, served, args.out / f"{stem}.png")
    print(text)


if __name__ == "__main__":
    main()
