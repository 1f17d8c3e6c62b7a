"""Tables, target checks and the results file of benchmarks/optimize_digits.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadgen import console
from machine import git_state
from rich.table import Table

from modelport.optimize import Report
from modelport.optimize.measure import Measurement
from modelport.optimize.report import machine

ORIGINAL = "original"
INT8_STATIC = "int8-static minmax"
INT8_STATIC_CHANNEL = "int8-static minmax per-channel"
PRUNED = "pruned 50%"

INT8_MIN_SMALLER, INT8_MIN_FASTER, INT8_MAX_DROP = 3.5, 1.5, 0.5
PRUNE_MAX_DROP = 1.0
STUDENT_MIN_SMALLER, STUDENT_MAX_DROP = 4.0, 2.0

HEADERS = [
    "variant",
    "size KiB",
    "size ratio vs original",
    "zipped KiB",
    "accuracy %",
    "drop (points)",
    "p50 b1 ms",
    "p50 b32 ms",
    "speed-up at b32 vs original",
    "peak MB",
]
CONSOLE_HEADERS = [
    "variant",
    "KiB",
    "ratio",
    "zipped",
    "acc %",
    "drop",
    "p50 b1",
    "p50 b32",
    "b32 x",
    "peak MB",
]


@dataclass(frozen=True)
class Settings:
    seconds: float
    epochs: int
    student_epochs: int
    out: Path
    tag: str
    quick: bool
    command: str
    date: str


@dataclass(frozen=True)
class StudentAttempt:
    spec: str
    parameters: int
    size_bytes: int
    accuracy: float
    teacher_parameters: int
    teacher_size_bytes: int
    teacher_accuracy: float
    path: Path

    @property
    def parameter_ratio(self) -> float:
        return self.teacher_parameters / self.parameters

    @property
    def size_ratio(self) -> float:
        return self.teacher_size_bytes / self.size_bytes

    @property
    def drop(self) -> float:
        return (self.teacher_accuracy - self.accuracy) * 100

    @property
    def meets(self) -> bool:
        smaller = max(self.parameter_ratio, self.size_ratio) >= STUDENT_MIN_SMALLER
        return smaller and self.drop <= STUDENT_MAX_DROP

    def as_dict(self) -> dict[str, Any]:
        return {
            "student": self.spec,
            "parameters": self.parameters,
            "size_bytes": self.size_bytes,
            "accuracy": self.accuracy,
            "parameter_ratio": round(self.parameter_ratio, 2),
            "size_ratio": round(self.size_ratio, 2),
            "drop_points": round(self.drop, 4),
            "meets_targets": self.meets,
        }


@dataclass(frozen=True)
class ModelRun:
    model: str
    teacher_parameters: int
    report: Report
    attempts: tuple[StudentAttempt, ...]
    student: StudentAttempt

    @property
    def name(self) -> str:
        return f"digits-{self.model}"


@dataclass(frozen=True)
class Check:
    model: str
    subject: str
    met: bool
    detail: str

    def line(self) -> str:
        return f"- {self.model}, {self.subject}: {'met' if self.met else 'NOT met'} ({self.detail})"


def size_ratio(base: Measurement, other: Measurement) -> float:
    return base.size_bytes / other.size_bytes


def speed_up(base: Measurement, other: Measurement, batch: int = 32) -> float:
    first, second = base.latency_at(batch), other.latency_at(batch)
    if first is None or second is None:
        return float("nan")
    return first.p50_ms / second.p50_ms


def drop(base: Measurement, other: Measurement) -> float:
    if base.value is None or other.value is None:
        return float("nan")
    return (base.value - other.value) * 100


def p50(measurement: Measurement, batch: int) -> str:
    entry = measurement.latency_at(batch)
    return "-" if entry is None else f"{entry.p50_ms:.3f}"


def table_rows(report: Report) -> list[list[str]]:
    base = report.variant(ORIGINAL).measurement
    rows = []
    for variant in report.variants:
        m = variant.measurement
        rows.append(
            [
                variant.name,
                f"{m.size_bytes / 1024:,.1f}",
                f"{size_ratio(base, m):.2f}x",
                f"{m.compressed_bytes / 1024:,.1f}",
                "-" if m.value is None else f"{m.value * 100:.2f}",
                f"{drop(base, m):+.2f}",
                p50(m, 1),
                p50(m, 32),
                f"{speed_up(base, m):.2f}x",
                f"{m.peak_memory_mb:.1f}",
            ]
        )
    return rows


def int8_check(run: ModelRun, name: str) -> Check:
    base = run.report.variant(ORIGINAL).measurement
    m = run.report.variant(name).measurement
    smaller, faster, lost = size_ratio(base, m), speed_up(base, m), drop(base, m)
    met = smaller >= INT8_MIN_SMALLER and faster >= INT8_MIN_FASTER and lost <= INT8_MAX_DROP
    detail = (
        f"{smaller:.2f}x smaller (target >= {INT8_MIN_SMALLER:g}x), {faster:.2f}x faster at "
        f"batch 32 (>= {INT8_MIN_FASTER:g}x), drop {lost:+.2f} points (<= {INT8_MAX_DROP:g})"
    )
    return Check(run.name, name, met, detail)


def prune_check(run: ModelRun) -> Check:
    base = run.report.variant(ORIGINAL).measurement
    lost = drop(base, run.report.variant(PRUNED).measurement)
    detail = f"drop {lost:+.2f} points (target <= {PRUNE_MAX_DROP:g})"
    return Check(run.name, PRUNED, lost <= PRUNE_MAX_DROP, detail)


def student_check(run: ModelRun) -> Check:
    base = run.report.variant(ORIGINAL).measurement
    m = run.report.variant(f"student {run.student.spec}").measurement
    files, lost = size_ratio(base, m), drop(base, m)
    parameters = run.student.parameter_ratio
    met = max(files, parameters) >= STUDENT_MIN_SMALLER and lost <= STUDENT_MAX_DROP
    tried = ", ".join(
        f"{a.spec} ({a.parameters:,} parameters, drop {a.drop:+.2f})" for a in run.attempts
    )
    detail = (
        f"{parameters:.1f}x fewer parameters and {files:.1f}x smaller file "
        f"(target >= {STUDENT_MIN_SMALLER:g}x), drop {lost:+.2f} points "
        f"(<= {STUDENT_MAX_DROP:g}); tried {tried}"
    )
    return Check(run.name, f"student {run.student.spec}", met, detail)


def checks(run: ModelRun) -> list[Check]:
    return [
        int8_check(run, INT8_STATIC),
        int8_check(run, INT8_STATIC_CHANNEL),
        prune_check(run),
        student_check(run),
    ]


def show(run: ModelRun) -> None:
    run.report.show(console)
    table = Table(title=f"{run.name} against the original (ms, points)", title_justify="left")
    table.add_column(CONSOLE_HEADERS[0], no_wrap=True)
    for header in CONSOLE_HEADERS[1:]:
        table.add_column(header, justify="right")
    for row in table_rows(run.report):
        table.add_row(*row)
    console.print(table)
    for check in checks(run):
        console.print(("[green]" if check.met else "[red]") + check.line(), highlight=False)


def save_report(run: ModelRun, settings: Settings) -> Path | None:
    stem = settings.out / f"optimize-digits-{run.model}-{settings.date}-{settings.tag}"
    run.report.write_json(stem.with_suffix(".json"))
    return run.report.plot(stem.with_suffix(".png"))


def markdown_table(rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(HEADERS) + " |",
        "|---|" + "---:|" * (len(HEADERS) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def model_section(run: ModelRun, plot: Path | None) -> list[str]:
    architecture = {
        "mlp": "MLP 64-1024-1024-10",
        "cnn": "CNN conv 32-64-128 (3x3), head 512-256-10, input [N, 1, 8, 8]",
    }[run.model]
    lines = [
        f"## {run.name}",
        "",
        f"Teacher: {architecture}, {run.teacher_parameters:,} parameters. Student: "
        f"`{run.student.spec}`, {run.student.parameters:,} parameters"
        f"{'' if run.student.meets else ' (no student tried met the targets)'}.",
        "",
        *markdown_table(table_rows(run.report)),
        "",
    ]
    if plot is not None:
        lines += [f"![{run.name}]({plot.name})", ""]
    return lines


def write_markdown(
    runs: list[ModelRun], plots: list[Path | None], settings: Settings, setup: list[str]
) -> Path:
    """The results file: `setup` (how the run was made, one bullet each), a table per model,
    then the targets, met or not."""
    path = settings.out / f"optimize-digits-{settings.date}-{settings.tag}.md"
    lines = [
        f"# modelport.optimize on the digits set ({settings.date})",
        "",
        f"- machine: {machine()}; git {git_state()}",
        *(f"- {line}" for line in setup),
        "",
    ]
    for run, plot in zip(runs, plots, strict=True):
        lines += model_section(run, plot)
    lines += ["## Targets", ""]
    lines += [check.line() for run in runs for check in checks(run)]
    path.write_text("\n".join([*lines, ""]), encoding="utf-8")
    return path
