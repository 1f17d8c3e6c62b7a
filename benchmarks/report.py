"""Benchmark reports: the rich table, the markdown results file and the PNG plot."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from loadgen import LOADERS, Point
from rich.table import Table


@dataclass
class Meta:
    date: str
    started: str
    command: str
    machine: str
    cpu_model: str
    cores: int
    python: str
    onnxruntime: str
    modelport: str
    numpy: str
    perf_analyzer: str
    wrk: str
    seconds: float
    warmup: float
    concurrency: list[int]
    model: str
    git: str = "unknown"
    server_args: list[str] = field(default_factory=list)


def fmt_num(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def span(values: list[float], digits: int = 0) -> str:
    """`median [min-max]` of the rounds' values ("-" when there are none)."""
    if not values:
        return "-"
    low, high = min(values), max(values)
    return f"{statistics.median(values):,.{digits}f} [{low:,.{digits}f}-{high:,.{digits}f}]"


def table_rows(points: Sequence[Point]) -> list[list[str]]:
    rows = []
    for p in points:
        fmt = p.fmt if not p.label else f"{p.fmt} ({p.label})"
        conc = str(p.concurrency) if p.loader != "onnxruntime" else "1 (loop)"
        rows.append(
            [
                p.loader,
                fmt,
                conc,
                fmt_num(p.inf_per_s, 0),
                fmt_num(p.p50_ms, 3),
                fmt_num(p.p99_ms, 3),
                fmt_num(p.ratio, 3),
            ]
        )
    return rows


HEADERS = ["load generator", "format", "concurrency", "inf/s", "p50 ms", "p99 ms", "ratio"]


def rich_table(points: Sequence[Point], title: str) -> Table:
    t = Table(title=title)
    for i, h in enumerate(HEADERS):
        t.add_column(h, justify="left" if i < 2 else "right")
    for row in table_rows(points):
        t.add_row(*row)
    return t


def markdown(meta: Meta, points: Sequence[Point], ceiling: Point, notes: Sequence[str]) -> str:
    lines = [
        f"# modelport HTTP serving benchmark, {meta.date}",
        "",
        f"- date: {meta.started}",
        f"- machine: {meta.machine}, CPU: {meta.cpu_model}, cores: {meta.cores}",
        f"- python {meta.python}, onnxruntime {meta.onnxruntime}, modelport {meta.modelport}, "
        f"numpy {meta.numpy}",
        f"- modelport checkout: {meta.git}",
        f"- load generators: perf_analyzer {meta.perf_analyzer}, wrk {meta.wrk}",
        f"- model: {meta.model}; batch 1 per request; {meta.seconds:g} s per point after a "
        f"{meta.warmup:g} s warm-up; concurrency {', '.join(map(str, meta.concurrency))}",
        f"- server: `modelport serve {' '.join(meta.server_args)}` (127.0.0.1, default settings)",
        f"- command: `{meta.command}`",
        "",
        f"ratio = inf/s divided by the in-process ceiling, the better of the two onnxruntime "
        f"loops ({ceiling.label}, {ceiling.inf_per_s:,.0f} inf/s). Server and load generator "
        "share the same cores.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(HEADERS) - 2)) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(points)]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    lines += [
        "",
        "Method: perf_analyzer runs three windows of seconds/3 (`-s 999 -r 3`, merged); wrk runs "
        "min(2, c) threads and c connections posting one fixed v2 JSON body "
        "(`benchmarks/wrk_post.lua`); the ceiling times each `session.run` call on the same "
        "[1, 64] input (1 thread: intra_op=1, inter_op=1, sequential; ORT defaults: no session "
        "options). Every point starts with a warm-up of the same load generator.",
        "",
    ]
    return "\n".join(lines)


def plot(points: Sequence[Point], ceilings: Sequence[Point], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served = [p for p in points if p.loader != "onnxruntime"]
    concs = sorted({p.concurrency for p in served})
    series = [(lo, f) for lo, f in LOADERS if any(p.loader == lo and p.fmt == f for p in served)]
    width = 0.8 / max(1, len(series))
    xs = np.arange(len(concs))
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, (lo, f) in enumerate(series):
        by_c = {p.concurrency: p for p in served if p.loader == lo and p.fmt == f}
        off = xs + (i - (len(series) - 1) / 2) * width
        thr = [by_c[c].inf_per_s if c in by_c else 0.0 for c in concs]
        p99 = [by_c[c].p99_ms if c in by_c else 0.0 for c in concs]
        label = f"{lo} / {f}"
        bars = ax_t.bar(off, thr, width, label=label)
        ax_t.bar_label(bars, fmt="%.0f", fontsize=7)
        bars = ax_l.bar(off, p99, width, label=label)
        ax_l.bar_label(bars, fmt="%.2f", fontsize=7)
    styles = ["--", ":"]
    for j, c in enumerate(ceilings):
        ax_t.axhline(
            c.inf_per_s,
            color="black",
            linestyle=styles[j % 2],
            linewidth=1,
            label=f"in-process ORT, {c.label}: {c.inf_per_s:,.0f} inf/s",
        )
        ax_l.axhline(
            c.p99_ms,
            color="black",
            linestyle=styles[j % 2],
            linewidth=1,
            label=f"in-process ORT, {c.label}: p99 {c.p99_ms:.3f} ms",
        )
    for ax, ylabel in ((ax_t, "throughput (inferences/s)"), (ax_l, "p99 latency (ms)")):
        ax.set_xticks(xs, [f"concurrency {c}" for c in concs])
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    ax_t.set_yscale("log")
    ax_t.set_title("throughput (log scale; higher is better)")
    ax_l.set_title("p99 latency (lower is better)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
