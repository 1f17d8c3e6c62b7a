"""The measured, gated, deployable runs behind the CLI commands: apply steps, measure the
original and every result on the user's data, judge the final result against the accuracy
budget, and publish it to a model repository only when it passes."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelport.optimize.data import Dataset
from modelport.optimize.errors import GateRefused, OptimizeError
from modelport.optimize.measure import MeasureOptions, measure
from modelport.optimize.progress import Progress, silent
from modelport.optimize.prune import prune
from modelport.optimize.report import Report, Variant, check_gate
from modelport.optimize.transforms import optimize_graph, quantize

REPORT_JSON = "optimize-report.json"
REPORT_PNG = "optimize-report.png"


@dataclass(frozen=True)
class Plan:
    """What `optimize` does, in this order: prune, graph-optimize, quantize."""

    prune: float | None = None
    structure: str = "unstructured"
    graph: str | None = None
    quantize: str | None = None
    calibration_method: str = "minmax"
    per_channel: bool = False
    keep_io_types: bool = True

    def steps(self) -> list[tuple[str, str]]:
        """(kind, display name) of each step, in order."""
        named = []
        if self.prune:
            kind = "" if self.structure == "unstructured" else f" {self.structure}"
            named.append(("prune", f"pruned {self.prune:.0%}{kind}"))
        if self.graph:
            named.append(("graph", f"graph-{self.graph}"))
        if self.quantize:
            method = f" {self.calibration_method}" if self.quantize == "int8-static" else ""
            named.append(("quantize", f"{self.quantize}{method}"))
        return named


@dataclass(frozen=True)
class Deployment:
    """Where a passing result goes: REPOSITORY/NAME, as a new version, optionally labelled."""

    repository: Path
    name: str
    label: str | None = None
    traffic: float | None = None

    @classmethod
    def parse(cls, target: str | Path, **options: Any) -> Deployment:
        """REPOSITORY/NAME; a repository that does not exist yet is created when deploying, as
        `modelport deploy` does."""
        path = Path(target)
        if not path.name:
            raise OptimizeError(f"--deploy takes REPOSITORY/NAME; {str(target)!r} names no model")
        if path.parent.exists() and not path.parent.is_dir():
            raise OptimizeError(
                f"--deploy takes REPOSITORY/NAME; the repository {path.parent} is not a directory"
            )
        return cls(path.parent, path.name, **options)


@dataclass
class Outcome:
    report: Report
    output: Path
    files: list[Path] = field(default_factory=list)


def apply_plan(
    source: Path,
    plan: Plan,
    workdir: Path,
    calibration: Dataset | None,
    progress: Progress,
) -> list[tuple[str, Path, dict[str, Any]]]:
    """Each step's result (cumulative), as (name, file, notes)."""
    results: list[tuple[str, Path, dict[str, Any]]] = []
    current = source
    names: list[str] = []
    steps = plan.steps()
    if not steps:
        raise OptimizeError("nothing to do: give --quantize, --prune and/or --graph")
    task = progress.task("optimizing", len(steps))
    for index, (kind, step) in enumerate(steps):
        target = workdir / f"step{index}.onnx"
        notes: dict[str, Any] = {}
        if kind == "prune":
            pruned = prune(current, target, fraction=plan.prune or 0.0, structure=plan.structure)
            notes["sparsity"] = round(pruned.sparsity, 4)
            notes["tensors_pruned"] = len(pruned.tensors)
        elif kind == "graph":
            optimize_graph(current, target, level=plan.graph or "extended")
        else:
            quantize(
                current,
                target,
                mode=plan.quantize or "",
                calibration=calibration,
                method=plan.calibration_method,
                per_channel=plan.per_channel,
                keep_io_types=plan.keep_io_types,
                progress=progress,
            )
        names.append(step)
        results.append((" + ".join(names), target, notes))
        current = target
        progress.advance(task, note=step)
    return results


def optimize_model(
    source: Path | str,
    output: Path | str,
    plan: Plan,
    evaluation: Dataset,
    *,
    calibration: Dataset | None = None,
    measure_options: MeasureOptions | None = None,
    max_drop: float | None = None,
    deployment: Deployment | None = None,
    report_dir: Path | None = None,
    progress: Progress | None = None,
) -> Outcome:
    """Optimize an ONNX model by `plan`, measure it against the original on `evaluation`,
    write the result and its report, and deploy it if it is within `max_drop`. A result beyond
    the budget is still written (to look at) and the report says so, but GateRefused is raised
    and nothing is deployed."""
    source, output = Path(source), Path(output)
    if not source.is_file():
        raise OptimizeError(f"{source} does not exist")
    progress = progress or silent()
    options = measure_options or MeasureOptions()
    with tempfile.TemporaryDirectory(prefix="modelport-optimize-") as scratch:
        steps = apply_plan(source, plan, Path(scratch), calibration, progress)
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(steps[-1][1], output)
        candidates = [(name, path, notes) for name, path, notes in steps[:-1]]
        candidates.append((steps[-1][0], output, steps[-1][2]))
        report = assess(
            "optimize",
            ("original", source),
            candidates,
            evaluation,
            options,
            progress,
            transient={path for _, path, _ in steps[:-1]},
        )
    return finish(report, output, max_drop, deployment, report_dir or output.parent, progress)


def assess(
    command: str,
    baseline: tuple[str, Path] | None,
    candidates: Sequence[tuple[str, Path, dict[str, Any]]],
    evaluation: Dataset,
    options: MeasureOptions,
    progress: Progress,
    transient: set[Path] | None = None,
) -> Report:
    """Measure the baseline (if any) and each candidate; the last candidate is the result.
    Files in `transient` are measured but not kept, so the report gives them no path."""
    everything: list[tuple[str, Path, dict[str, Any]]] = [(*baseline, {})] if baseline else []
    everything += candidates
    task = progress.task("measuring", len(everything))
    variants = []
    for name, path, notes in everything:
        measured = measure(path, evaluation, options)
        kept = None if path in (transient or set()) else path
        variants.append(Variant(name, kept, tuple(name.split(" + ")), measured, notes))
        progress.advance(task, note=name)
    return Report(
        command,
        variants,
        baseline=baseline[0] if baseline else None,
        candidate=variants[-1].name,
    )


def finish(
    report: Report,
    output: Path,
    max_drop: float | None,
    deployment: Deployment | None,
    report_dir: Path,
    progress: Progress,
) -> Outcome:
    """Judge, write the report (JSON and PNG), and deploy when the gate allows it."""
    if max_drop is not None and report.baseline is not None:
        candidate = report.variant(report.candidate or "")
        report.gate = check_gate(report.variant(report.baseline), candidate, max_drop)
    report_dir.mkdir(parents=True, exist_ok=True)
    stem = output.name.removesuffix(".onnx")
    json_path = report.write_json(report_dir / f"{stem}.report.json")
    png_path = report.plot(report_dir / f"{stem}.report.png")
    files = [json_path] + ([png_path] if png_path else [])
    if report.gate is not None and not report.gate.passed:
        raise GateRefused(f"not deployed: {report.gate.describe()}", report)
    if deployment is not None:
        report.deployed = _deploy(output, deployment, json_path, png_path)
        report.write_json(json_path)
    return Outcome(report, output, files)


def _deploy(
    model: Path, deployment: Deployment, report_json: Path, report_png: Path | None
) -> dict[str, Any]:
    from modelport.repository.publish import PublishError, publish

    with tempfile.TemporaryDirectory(prefix="modelport-deploy-") as scratch:
        extras = [Path(shutil.copyfile(report_json, Path(scratch) / REPORT_JSON))]
        if report_png is not None:
            extras.append(Path(shutil.copyfile(report_png, Path(scratch) / REPORT_PNG)))
        try:
            published = publish(
                deployment.repository,
                deployment.name,
                model,
                label=deployment.label,
                traffic=deployment.traffic,
                extras=extras,
            )
        except PublishError as exc:
            raise OptimizeError(f"cannot deploy: {exc}") from None
    return {
        "repository": str(deployment.repository),
        "name": published.name,
        "version": published.version,
        "label": deployment.label,
        "traffic": deployment.traffic,
        "path": str(published.path),
    }
