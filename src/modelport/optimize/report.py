"""The report of an optimization run: each variant's size, quality, latency, throughput and
memory; the accuracy gate's verdict; where the result was deployed. Shown as a rich table,
written as JSON, and plotted (quality against size and against latency) as PNG."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from modelport.optimize.errors import OptimizeError
from modelport.optimize.measure import Measurement
from modelport.optimize.metrics import get_metric


@dataclass(frozen=True)
class Variant:
    name: str
    path: Path | None
    steps: tuple[str, ...]
    measurement: Measurement
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": None if self.path is None else str(self.path),
            "steps": list(self.steps),
            **self.measurement.as_dict(),
            "notes": self.notes,
        }


@dataclass(frozen=True)
class GateVerdict:
    metric: str
    baseline: float
    candidate: float
    drop: float
    unit: str
    max_drop: float

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop

    def describe(self) -> str:
        verdict = "within" if self.passed else "beyond"
        return (
            f"{self.metric} {self.baseline:.4f} -> {self.candidate:.4f}: a drop of "
            f"{self.drop:.2f} {self.unit}, {verdict} the budget of {self.max_drop:g} {self.unit}"
        )


def check_gate(baseline: Variant, candidate: Variant, max_drop: float) -> GateVerdict:
    first, last = baseline.measurement, candidate.measurement
    if first.metric is None or first.value is None or last.value is None:
        raise OptimizeError("the accuracy gate needs evaluation data with labels (y)")
    drop, unit = get_metric(first.metric).drop(first.value, last.value)
    return GateVerdict(first.metric, first.value, last.value, round(drop, 4), unit, max_drop)


@dataclass
class Report:
    command: str
    variants: list[Variant]
    baseline: str | None = None
    candidate: str | None = None
    gate: GateVerdict | None = None
    deployed: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def as_dict(self) -> dict[str, Any]:
        gate = None
        if self.gate is not None:
            gate = {**vars(self.gate), "passed": self.gate.passed}
        return {
            "command": self.command,
            "created": self.created,
            "machine": machine(),
            "baseline": self.baseline,
            "candidate": self.candidate,
            "variants": [v.as_dict() for v in self.variants],
            "gate": gate,
            "deployed": self.deployed,
            **self.extra,
        }

    def write_json(self, path: Path) -> Path:
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    def table(self) -> Table:
        metric = next((v.measurement.metric for v in self.variants if v.measurement.metric), None)
        table = Table(title=f"modelport {self.command}", title_justify="left")
        table.add_column("variant")
        table.add_column("size", justify="right")
        table.add_column("zipped", justify="right")
        if metric:
            table.add_column(metric, justify="right")
        for batch in (1, 32):
            table.add_column(f"p50 / p99 b{batch} (ms)", justify="right")
        table.add_column("samples/s", justify="right")
        table.add_column("peak MB", justify="right")
        base = self.variant(self.baseline).measurement if self.baseline else None
        for variant in self.variants:
            m = variant.measurement
            size = _kb(m.size_bytes)
            if base is not None and variant.name != self.baseline and m.size_bytes:
                size += f" ({base.size_bytes / m.size_bytes:.1f}x)"
            row = [variant.name, size, _kb(m.compressed_bytes)]
            if metric:
                row.append("-" if m.value is None else f"{m.value:.4f}")
            for batch in (1, 32):
                entry = m.latency_at(batch)
                row.append("-" if entry is None else f"{entry.p50_ms:.3f} / {entry.p99_ms:.3f}")
            row.append("-" if m.throughput is None else f"{m.throughput:,.0f}")
            row.append(f"{m.peak_memory_mb:.1f}")
            table.add_row(*row)
        return table

    def show(self, console: Console | None = None) -> None:
        console = console or Console()
        console.print(self.table())
        if self.gate is not None:
            style = "green" if self.gate.passed else "red"
            console.print(f"[{style}]gate: {self.gate.describe()}[/{style}]")
        if self.deployed:
            d = self.deployed
            label = f" labelled {d['label']}" if d.get("label") else ""
            console.print(
                f"deployed: {d['name']} version {d['version']}{label} in {d['repository']}"
            )

    def plot(self, path: Path) -> Path | None:
        """Quality against size and against batch-32 latency; None when matplotlib is absent."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        measured = [v for v in self.variants if v.measurement.value is not None]
        metric = measured[0].measurement.metric if measured else None
        figure, axes = plt.subplots(1, 2, figsize=(11, 4.8))
        for index, variant in enumerate(self.variants):
            m = variant.measurement
            y = m.value if metric else 0.0
            latency = m.latency_at(32) or m.latency_at(1)
            marker = "os^vD<>ph*"[index % 10]
            for axis, x in ((axes[0], m.size_bytes / 1024), (axes[1], latency and latency.p50_ms)):
                if x is not None and y is not None:
                    label = variant.name if axis is axes[0] else None
                    axis.scatter([x], [y], s=60, marker=marker, label=label, alpha=0.85)
        figure.legend(
            loc="lower center", ncol=min(len(self.variants), 4), fontsize=8, frameon=False
        )
        axes[0].set_xlabel("model size (KiB)")
        batch = "32" if any(v.measurement.latency_at(32) for v in self.variants) else "1"
        axes[1].set_xlabel(f"p50 latency at batch {batch} (ms)")
        for axis in axes:
            axis.set_ylabel(metric or "-")
            axis.grid(alpha=0.3)
        figure.suptitle(f"modelport {self.command}: {metric or 'size and latency'}")
        figure.tight_layout(rect=(0, 0.12, 1, 1))
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return path


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with Path("/proc/cpuinfo").open(encoding="utf-8") as info:
            model = next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                model,
            )
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def _kb(size: int) -> str:
    return f"{size / 1024:,.1f} KiB"
