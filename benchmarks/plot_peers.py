"""Throughput and p99 latency against concurrency, modelport next to the peers, from the shared
bench's results (one tag = one run; repeats drawn as their median with the range as error bars).

    python benchmarks/plot_peers.py --tag TAG --out benchmarks/results/peers-TAG.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PEERS = Path(os.environ.get("PEERS", Path.home() / ".cache" / "modelport-bench"))


def load(tag: str) -> list[dict[str, object]]:
    rows = []
    with (PEERS / "results" / "results.jsonl").open() as source:
        for line in source:
            row = json.loads(line)
            if row.get("tag") == tag:
                rows.append(row)
    if not rows:
        raise SystemExit(f"no results tagged {tag!r} in {PEERS / 'results' / 'results.jsonl'}")
    return rows


def plot(rows: list[dict[str, object]], out: Path, title: str) -> None:
    models = sorted({str(row["model"]) for row in rows}, reverse=True)
    figure, axes = plt.subplots(len(models), 2, figsize=(12, 4.2 * len(models)), squeeze=False)
    for line, model in enumerate(models):
        series: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
        for row in rows:
            if row["model"] == model:
                key = f"{row['server']} ({row['loader']})"
                series[key].append((int(row["conc"]), float(row["rps"]), float(row["p99_ms"])))
        for key in sorted(series):
            style = "-o" if key.startswith("modelport") else "--x"
            width = 2.2 if key.startswith("modelport") else 1.2
            for column in (0, 1):  # median of the repeats, their range as error bars
                by_concurrency: dict[int, list[float]] = defaultdict(list)
                for concurrency, rps, p99 in series[key]:
                    by_concurrency[concurrency].append((rps, p99)[column])
                xs = sorted(by_concurrency)
                mid = [statistics.median(by_concurrency[x]) for x in xs]
                low = [m - min(by_concurrency[x]) for m, x in zip(mid, xs, strict=True)]
                high = [max(by_concurrency[x]) - m for m, x in zip(mid, xs, strict=True)]
                axes[line][column].errorbar(
                    xs, mid, yerr=[low, high], fmt=style, lw=width, capsize=3, label=key
                )
        for column, label in enumerate(("inferences/s", "p99 latency (ms)")):
            axis = axes[line][column]
            axis.set_xscale("log", base=2)
            axis.set_xlabel("concurrent clients")
            axis.set_ylabel(label)
            axis.set_title(f"{model}: {label}")
            axis.grid(alpha=0.3)
        axes[line][1].set_yscale("log")
        axes[line][0].legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    plot(load(args.tag), args.out, f"modelport vs peers, shared bench, run {args.tag}")


if __name__ == "__main__":
    main()
