"""Two checkouts of modelport side by side (before vs after a change), in alternating rounds.

On the shared 2-core VM one run of a point moves by 10-30 % within minutes, so a "before" run
followed by an "after" run says as much about the neighbours as about the change. Here every round
measures both sides on the same points, one after the other, and the order alternates (round 1:
before, after; round 2: after, before; ...). Each side runs the shared bench's driver
(../shared/bench/compare.py, as run_workers.sh does): mlp (bench-mlp.yaml, MODELPORT_BATCH=32) and
cnn (bench-cnn.yaml, MODELPORT_BATCH=8), one sample per request, with wrk (v2 JSON) and
perf_analyzer (HTTP binary, gRPC). Results go to the bench's results.jsonl under the tags
TAG-before and TAG-after (`summarize.py --tags TAG-before,TAG-after` separates them).

    python benchmarks/ab_rounds.py --tag TAG --before-commit COMMIT [--rounds 3] [--dur 5]
        --> benchmarks/results/ab-DATE-TAG.md and .png

"after" is this checkout (its .venv/bin/modelport). "before" is --before (a checkout with its
own .venv); when that directory is missing the script makes it: a git worktree of
--before-commit and a virtualenv with `pip install -e` constrained to the versions of this
checkout's .venv, so only modelport's own code differs; it removes what it made at the end.
Needs the shared bench's venvs: bash ../shared/bench/setup.sh torch perf
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from machine import BENCH, BENCH_PYTHON, PEERS, cpu_model, git_state

ROOT = Path(__file__).resolve().parent.parent
RESULTS = PEERS / "results" / "results.jsonl"
CONFIGS = ROOT / "benchmarks" / "configs"
MODELS = {"mlp": ("bench-mlp.yaml", 32), "cnn": ("bench-cnn.yaml", 8)}  # config, MODELPORT_BATCH
LOADERS = ("wrk", "pa-http", "pa-grpc")
LOADER_NAMES = {"wrk": "wrk (v2 JSON)", "pa-http": "perf_analyzer HTTP binary",
                "pa-grpc": "perf_analyzer gRPC"}  # fmt: skip
SIDES = ("before", "after")


def run_side(side: str, modelport: Path, model: str, args: argparse.Namespace) -> list[dict]:
    """One compare.py run of one side on one model; the rows it appended to results.jsonl."""
    config, batch = MODELS[model]
    env = dict(os.environ, MODELPORT=str(modelport), MODELPORT_CONFIG=str(CONFIGS / config),
               MODELPORT_BATCH=str(batch))  # fmt: skip
    tag = f"{args.tag}-{side}"
    start = RESULTS.stat().st_size if RESULTS.exists() else 0
    done = subprocess.run(
        [str(BENCH_PYTHON), "compare.py", "--servers", "modelport", "--models", model,
         "--conc", str(args.conc), "--loaders", ",".join(args.loaders), "--dur", str(args.dur),
         "--warm", str(args.warm), "--tag", tag, "--port", str(args.port),
         "--quiet-wait", str(args.quiet_wait)],
        cwd=BENCH, env=env, capture_output=True, text=True,
    )  # fmt: skip
    for line in done.stdout.splitlines():
        if "FAILED" in line:
            print(f"  {side} {model}: {line.strip()}", flush=True)
    rows = []
    with RESULTS.open("rb") as results:  # only what this run appended (other runs may share it)
        results.seek(start)
        for line in results.read().decode().splitlines():
            row = json.loads(line)
            if row.get("tag") == tag and row["model"] == model and row["server"] == "modelport":
                rows.append(row)
    if done.returncode or not rows:
        print(f"  {side} {model}: compare.py rc={done.returncode}, {len(rows)} rows\n"
              f"{done.stdout[-1500:]}{done.stderr[-1500:]}", flush=True)  # fmt: skip
    return rows


def make_before(path: Path, commit: str) -> None:
    """A worktree of commit at path with a venv pinned to this checkout's package versions."""
    print(f"making the before checkout: worktree of {commit} at {path}", flush=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit],
                   check=True)  # fmt: skip
    freeze = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "pip", "freeze"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    pins = [line for line in freeze.splitlines()
            if "==" in line and not line.lower().startswith("modelport")]  # fmt: skip
    subprocess.run([sys.executable, "-m", "venv", str(path / ".venv")], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write("\n".join(pins) + "\n")
    try:
        subprocess.run([str(path / ".venv" / "bin" / "pip"), "install", "-q", "-c",
                        constraints.name, "-e", str(path)], check=True)  # fmt: skip
    finally:
        Path(constraints.name).unlink()


def remove_before(path: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                   check=False)  # fmt: skip
    shutil.rmtree(path, ignore_errors=True)


def span(values: list[float], digits: int = 0) -> str:
    return (f"{statistics.median(values):,.{digits}f} "
            f"[{min(values):,.{digits}f}-{max(values):,.{digits}f}]")  # fmt: skip


def verdict(ratios: list[float]) -> str:
    low, mid = min(ratios), statistics.median(ratios)
    if low <= 1.0 <= max(ratios) or mid >= 0.95:
        return "no loss beyond noise"
    if low > 1.0:
        gain = (mid - 1) * 100
        return f"no loss beyond noise (after faster in every round, median +{gain:.0f} %)"
    return f"LOSS: after is {(1 - mid) * 100:.0f} % slower (slower in every round)"


def paired(rows: list[dict], model: str, loader: str) -> dict[int, dict[str, dict]]:
    """{round: {side: row}} for one model and loader."""
    found: dict[int, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        if row["model"] == model and row["loader"] == loader:
            found[row["round"]][row["side"]] = row
    return {r: sides for r, sides in sorted(found.items()) if len(sides) == 2}


def report(rows: list[dict], args: argparse.Namespace, before_desc: str, took: float) -> str:
    after_desc = f"the working tree at {git_state()}"
    lines = [
        f"# Before vs after, alternating rounds: {args.tag} ({time.strftime('%Y-%m-%d')})",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')} ({took / 60:.0f} min of measuring)",
        f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}; the server "
        "and the load generator share the cores, other agents' work ran on the same machine "
        "(`oth` below)",
        f"- before: {before_desc}; after: {after_desc}; each with its own "
        "`.venv/bin/modelport`, same package versions",
        f"- command: `{args.command}`",
        f"- {args.rounds} rounds; odd rounds run before then after, even rounds after then "
        f"before; per side and round: mlp (`benchmarks/configs/bench-mlp.yaml`, "
        f"MODELPORT_BATCH=32) and cnn (`bench-cnn.yaml`, MODELPORT_BATCH=8) at concurrency "
        f"{args.conc}, {args.dur:g} s per point after {args.warm:g} s of warm-up, one sample "
        "per request, through ../shared/bench/compare.py (answers checked against onnxruntime "
        "before and after the load); tags "
        f"`{args.tag}-before` / `{args.tag}-after` in $PEERS/results/results.jsonl",
        "- values: median over the rounds [min-max]; ratio = after / before of the same round "
        '(median [min-max] over the rounds); verdict: "no loss beyond noise" when the ratio\'s '
        "range includes 1.0 or its median is >= 0.95",
        "",
        "| model | loader | before inf/s | after inf/s | after/before inf/s | before p99 ms | "
        "after p99 ms | after/before p99 | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    missing = []
    for model in args.models:
        for loader in args.loaders:
            pairs = paired(rows, model, loader)
            if not pairs:
                missing.append(f"{model} {loader}")
                continue
            ips = {side: [p[side]["rps"] for p in pairs.values()] for side in SIDES}
            p99 = {side: [p[side]["p99_ms"] for p in pairs.values()] for side in SIDES}
            ratio = [p["after"]["rps"] / p["before"]["rps"] for p in pairs.values()]
            p99_ratio = [p["after"]["p99_ms"] / p["before"]["p99_ms"] for p in pairs.values()]
            lines.append(
                f"| {model} | {LOADER_NAMES[loader]} | {span(ips['before'])} | "
                f"{span(ips['after'])} | {span(ratio, 2)} | {span(p99['before'], 1)} | "
                f"{span(p99['after'], 1)} | {span(p99_ratio, 2)} | {verdict(ratio)} |"
                + ("" if len(pairs) == args.rounds else f" ({len(pairs)} of {args.rounds} rounds)")
            )
    if missing:
        lines += ["", f"No complete round for: {', '.join(missing)}."]
    lines += [
        "",
        "## Every round",
        "",
        "`oth` = cores used by other work on the machine during the point (cpumon.py); "
        "`srv` = the server's cores.",
        "",
        "| round | order | model | loader | before inf/s | after inf/s | ratio | "
        "before p99 | after p99 | srv b/a | oth b/a |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for model in args.models:
        for loader in args.loaders:
            for index, pair in paired(rows, model, loader).items():
                b, a = pair["before"], pair["after"]
                order = "b, a" if index % 2 else "a, b"
                lines.append(
                    f"| {index} | {order} | {model} | {loader} | {b['rps']:,.0f} | "
                    f"{a['rps']:,.0f} | {a['rps'] / b['rps']:.2f} | {b['p99_ms']:.1f} | "
                    f"{a['p99_ms']:.1f} | {b['server_cores']:.2f}/{a['server_cores']:.2f} | "
                    f"{b['other_cores']:.2f}/{a['other_cores']:.2f} |"
                )
    errors = sum(int(row.get("errors") or 0) for row in rows)
    lines += ["", f"Load-generator errors counted (wrk): {errors}."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], args: argparse.Namespace, out: Path) -> None:
    figure, axes = plt.subplots(len(args.models), 2, figsize=(11, 3.8 * len(args.models)),
                                squeeze=False)  # fmt: skip
    width = 0.38
    for line, model in enumerate(args.models):
        for column, (key, label) in enumerate((("rps", "inferences/s"), ("p99_ms", "p99 ms"))):
            axis = axes[line][column]
            for offset, side in enumerate(SIDES):
                mids, lows, highs = [], [], []
                for loader in args.loaders:
                    values = [p[side][key] for p in paired(rows, model, loader).values()] or [0.0]
                    mid = statistics.median(values)
                    mids.append(mid)
                    lows.append(mid - min(values))
                    highs.append(max(values) - mid)
                xs = [i + (offset - 0.5) * width for i in range(len(args.loaders))]
                axis.bar(xs, mids, width, yerr=[lows, highs], capsize=4, label=side,
                         color=("#8c8c8c", "#1f77b4")[offset])  # fmt: skip
            axis.set_xticks(range(len(args.loaders)))
            axis.set_xticklabels([LOADER_NAMES[name] for name in args.loaders], fontsize=8)
            axis.set_title(f"{model}, concurrency {args.conc}: {label}", fontsize=10)
            axis.grid(axis="y", alpha=0.3)
            axis.legend(fontsize=8)
    figure.suptitle(
        f"before vs after ({args.tag}): median of {args.rounds} alternating rounds, bars = min-max",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", required=True)
    parser.add_argument("--before", type=Path, default=Path("/tmp/modelport-before"),
                        help="checkout of the before code with its own .venv")  # fmt: skip
    parser.add_argument("--before-commit", default="",
                        help="commit to check out at --before when it is missing")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dur", type=float, default=5.0, help="seconds per point")
    parser.add_argument("--warm", type=float, default=1.0, help="seconds of wrk warm-up")
    parser.add_argument("--conc", type=int, default=32)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--loaders", default=",".join(LOADERS))
    parser.add_argument("--port", type=int, default=18600, help="HTTP port (gRPC: port + 1)")
    parser.add_argument("--quiet-wait", type=float, default=10.0,
                        help="compare.py: max s to wait for a quiet second")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--stem", default="", help="result file name (default ab-DATE-TAG)")
    args = parser.parse_args()
    args.models = args.models.split(",")
    args.loaders = args.loaders.split(",")
    args.command = "python benchmarks/ab_rounds.py " + " ".join(sys.argv[1:])
    if not BENCH_PYTHON.exists():
        raise SystemExit(f"{BENCH_PYTHON} is missing: bash {BENCH}/setup.sh torch perf")
    modelport = {"before": args.before / ".venv" / "bin" / "modelport",
                 "after": ROOT / ".venv" / "bin" / "modelport"}  # fmt: skip
    made = False
    if not modelport["before"].exists():
        if not args.before_commit or args.before.exists():
            raise SystemExit(f"{modelport['before']} is missing (pass --before-commit COMMIT "
                             "and a --before path that does not exist yet)")  # fmt: skip
        make_before(args.before, args.before_commit)
        made = True
    head = subprocess.run(["git", "-C", str(args.before), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    before_desc = f"commit {head or 'unknown'} (`{args.before}`)"
    rows: list[dict] = []
    started = time.time()
    try:
        for index in range(1, args.rounds + 1):
            order = SIDES if index % 2 else SIDES[::-1]
            for side in order:
                for model in args.models:
                    got = run_side(side, modelport[side], model, args)
                    for row in got:
                        row.update(side=side, round=index)
                    rows += got
                    shown = ", ".join(f"{r['loader']} {r['rps']:,.0f}" for r in got)
                    print(f"round {index}/{args.rounds} {side:6} {model}: {shown or 'NO RESULT'}",
                          flush=True)  # fmt: skip
    finally:
        if made:
            remove_before(args.before)
    took = time.time() - started
    stem = args.stem or f"ab-{time.strftime('%Y-%m-%d')}-{args.tag}"
    args.out.mkdir(parents=True, exist_ok=True)
    (PEERS / "results" / f"{stem}.rows.json").write_text(json.dumps(rows, indent=1))
    text = report(rows, args, before_desc, took)
    (args.out / f"{stem}.md").write_text(text)
    plot(rows, args, args.out / f"{stem}.png")
    print(text)


if __name__ == "__main__":
    main()
