"""The optimization toolkit on the digits set: two torch teachers, all variants measured in one run.

    python benchmarks/optimize_digits.py [--seconds 2] [--epochs 35] [--tag NAME] [--quick]

Nothing is downloaded. The data is scikit-learn's digits (8x8 images, pixels / 16), split 70/30
stratified with a fixed seed; 256 training rows calibrate the static quantizers. Two teachers are
trained on the CPU and exported with modelport.optimize.convert:
- mlp: 64-1024-1024-10 with ReLU, big enough that compute dominates at batch 32;
- cnn: three 3x3 conv blocks (32, 64, 128 channels, two 2x2 poolings) and a 256-unit head, on
  images shaped [N, 1, 8, 8].

From each teacher: graph optimization (extended), int8 dynamic, int8 static (minmax, per tensor
and per channel), fp16, 50% unstructured pruning, pruning then int8 static, and a distilled
student (the first of two sizes that is 4x smaller and within 2 points). modelport.optimize.assess
measures the teacher and every variant on the validation split, each in its own process with one
thread: size, accuracy, p50 latency at batch 1 and 32, peak memory.

Writes results/optimize-digits-<date>-<tag>.md, and a PNG plot and a JSON report per model.
--quick is a smoke run (3 teacher epochs, 5 student epochs, 0.2 s per latency point) whose files
go to the temp directory unless --out is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
from loadgen import BENCH_DIR, console
from optimize_results import (
    INT8_STATIC,
    INT8_STATIC_CHANNEL,
    ORIGINAL,
    PRUNED,
    ModelRun,
    Settings,
    StudentAttempt,
    save_report,
    show,
    write_markdown,
)

from modelport.optimize import (
    Dataset,
    MeasureOptions,
    TrainConfig,
    assess,
    convert,
    distill,
    optimize_graph,
    prune,
    quantize,
    run_model,
)
from modelport.optimize.progress import Progress
from modelport.optimize.train import fit

if TYPE_CHECKING:
    import torch

RESULTS = BENCH_DIR / "results"
SEED = 0
CALIBRATION_ROWS = 256
BATCH = 64
LEARNING_RATE = 1e-3
TEACHER_EPOCHS, QUICK_TEACHER_EPOCHS = 35, 3
STUDENT_EPOCHS, QUICK_STUDENT_EPOCHS = 60, 5
SECONDS, QUICK_SECONDS = 2.0, 0.2
MODELS = ("mlp", "cnn")
STUDENTS = {"mlp": ("small_mlp", "mlp:128"), "cnn": ("small_cnn", "cnn:16,32")}


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    def train(self, model: str) -> Dataset:
        return Dataset.of(shaped(self.x_train, model), self.y_train)

    def val(self, model: str) -> Dataset:
        return Dataset.of(shaped(self.x_val, model), self.y_val)


def shaped(x: np.ndarray, model: str) -> np.ndarray:
    return x.reshape(-1, 1, 8, 8) if model == "cnn" else x


def load_split() -> Split:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=0.3, stratify=y, random_state=SEED
    )
    return Split(x_train, y_train, x_val, y_val)


def build_teacher(model: str) -> torch.nn.Module:
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    if model == "mlp":
        return nn.Sequential(
            nn.Linear(64, 1024),
            nn.ReLU(),
            nn.Linear(1024, 1024),
            nn.ReLU(),
            nn.Linear(1024, 10),
        )
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 2 * 2, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


def train_teacher(
    module: torch.nn.Module, data: Dataset, epochs: int, progress: Progress, label: str
) -> None:
    import torch

    y = torch.from_numpy(data.labels())

    def loss(scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(scores, y[rows])

    config = TrainConfig(epochs, BATCH, LEARNING_RATE, SEED)
    fit(module, torch.from_numpy(data.x), loss, config, progress, f"training {label}")


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def accuracy(path: Path, data: Dataset) -> float:
    scores = next(iter(run_model(path, Dataset.of(data.x)).values()))
    return float(np.mean(scores.argmax(axis=1) == data.labels()))


def int8_static(
    source: Path, output: Path, calibration: Dataset, progress: Progress, per_channel: bool = False
) -> Path:
    return quantize(
        source,
        output,
        mode="int8-static",
        calibration=calibration,
        method="minmax",
        per_channel=per_channel,
        progress=progress,
    )


def variants(
    source: Path, calibration: Dataset, work: Path, progress: Progress
) -> list[tuple[str, Path, dict[str, Any]]]:
    """Each optimization of `source`, as (name, file, notes) for assess."""
    pruned = prune(source, work / "pruned.onnx", fraction=0.5)
    sparsity = {"sparsity": round(pruned.sparsity, 4)}
    return [
        ("graph-extended", optimize_graph(source, work / "graph.onnx", level="extended"), {}),
        ("int8-dynamic", quantize(source, work / "int8-dynamic.onnx", mode="int8-dynamic"), {}),
        (INT8_STATIC, int8_static(source, work / "int8-static.onnx", calibration, progress), {}),
        (
            INT8_STATIC_CHANNEL,
            int8_static(source, work / "int8-channel.onnx", calibration, progress, True),
            {"per_channel": True},
        ),
        ("fp16", quantize(source, work / "fp16.onnx", mode="fp16"), {}),
        (PRUNED, pruned.path, sparsity),
        (
            f"{PRUNED} + {INT8_STATIC}",
            int8_static(pruned.path, work / "pruned-int8.onnx", calibration, progress),
            sparsity,
        ),
    ]


def distill_student(
    model: str,
    teacher: Path,
    teacher_parameters: int,
    split: Split,
    work: Path,
    settings: Settings,
    progress: Progress,
) -> tuple[StudentAttempt, ...]:
    """Students in order of size until one is 4x smaller and within 2 points of the teacher."""
    val = split.val(model)
    teacher_accuracy = accuracy(teacher, val)
    config = TrainConfig(epochs=settings.student_epochs, seed=SEED)
    attempts: list[StudentAttempt] = []
    for spec in STUDENTS[model]:
        path = work / f"student-{spec.replace(':', '-').replace(',', '-')}.onnx"
        result = distill(
            teacher, split.train(model), path, student=spec, config=config, progress=progress
        )
        attempt = StudentAttempt(
            spec,
            result.parameters,
            path.stat().st_size,
            accuracy(path, val),
            teacher_parameters,
            teacher.stat().st_size,
            teacher_accuracy,
            path,
        )
        attempts.append(attempt)
        if attempt.meets:
            break
    return tuple(attempts)


def chosen(attempts: Sequence[StudentAttempt]) -> StudentAttempt:
    return next((attempt for attempt in attempts if attempt.meets), attempts[-1])


def benchmark(
    model: str, split: Split, settings: Settings, work: Path, progress: Progress
) -> ModelRun:
    work.mkdir()
    train = split.train(model)
    teacher = build_teacher(model)
    train_teacher(teacher, train, settings.epochs, progress, f"{model} teacher")
    source = work / "original.onnx"
    convert(teacher, Dataset.of(train.x[:BATCH]), source)
    parameters = parameter_count(teacher)
    calibration = Dataset.of(train.x[:CALIBRATION_ROWS])
    candidates = variants(source, calibration, work, progress)
    attempts = distill_student(model, source, parameters, split, work, settings, progress)
    student = chosen(attempts)
    notes = {"parameters": student.parameters, "teacher_parameters": parameters}
    candidates.append((f"student {student.spec}", student.path, notes))
    options = MeasureOptions(metric="accuracy", seconds=settings.seconds, threads=1)
    report = assess(
        f"benchmark digits-{model}",
        (ORIGINAL, source),
        candidates,
        split.val(model),
        options,
        progress,
        transient={source, *(path for _, path, _ in candidates)},
    )
    report.extra["benchmark"] = {
        "teacher_parameters": parameters,
        "teacher_epochs": settings.epochs,
        "student_epochs": settings.student_epochs,
        "students_tried": [attempt.as_dict() for attempt in attempts],
        "student": student.spec,
    }
    return ModelRun(model, parameters, report, attempts, student)


def settings_from(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="run")
    parser.add_argument(
        "--seconds", type=float, help=f"per latency point (default {SECONDS:g}, quick 0.2)"
    )
    parser.add_argument(
        "--epochs", type=int, help=f"teacher epochs (default {TEACHER_EPOCHS}, quick 3)"
    )
    parser.add_argument("--out", type=Path, help=f"results directory (default {RESULTS})")
    parser.add_argument("--quick", action="store_true", help="smoke run, results in the temp dir")
    args = parser.parse_args(argv)
    quick = args.quick
    default_out = Path(tempfile.gettempdir()) if quick else RESULTS
    return Settings(
        seconds=args.seconds or (QUICK_SECONDS if quick else SECONDS),
        epochs=args.epochs or (QUICK_TEACHER_EPOCHS if quick else TEACHER_EPOCHS),
        student_epochs=QUICK_STUDENT_EPOCHS if quick else STUDENT_EPOCHS,
        out=args.out or default_out,
        tag=args.tag,
        quick=quick,
        command=shlex.join(["python", "benchmarks/optimize_digits.py", *argv]),
        date=dt.date.today().isoformat(),
    )


def quiet_exporter() -> None:
    """torch.onnx logs that torchvision is absent at every export; nothing here uses it."""
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def setup_lines(settings: Settings) -> list[str]:
    import torch

    return [
        f"python {sys.version.split()[0]}; onnxruntime {ort.__version__}; "
        f"torch {torch.__version__}",
        f"command: `{settings.command}`",
        f"data: sklearn digits / 16, stratified 70/30 split (seed {SEED}); calibration "
        f"{CALIBRATION_ROWS} training rows; accuracy on the validation split",
        f"teachers: Adam lr {LEARNING_RATE:g}, batch {BATCH}, {settings.epochs} epochs, "
        f"seed {SEED}; students: modelport.optimize.distill, {settings.student_epochs} epochs",
        f"measured by modelport.optimize.assess: one process per variant, 1 thread, "
        f"{settings.seconds:g} s per latency point; ratios and drops are against the original "
        "measured in the same run (speed-up: original p50 / variant p50 at batch 32)",
    ]


def main(argv: list[str] | None = None) -> int:
    settings = settings_from(sys.argv[1:] if argv is None else argv)
    quiet_exporter()
    settings.out.mkdir(parents=True, exist_ok=True)
    split = load_split()
    console.log(f"digits: {len(split.y_train)} training rows, {len(split.y_val)} validation rows")
    runs = []
    with (
        tempfile.TemporaryDirectory(prefix="mp-optimize-digits-") as tmp,
        Progress(console=console) as progress,
    ):
        for model in MODELS:
            runs.append(benchmark(model, split, settings, Path(tmp) / model, progress))
    plots = []
    for run in runs:
        show(run)
        plots.append(save_report(run, settings))
    console.log(f"wrote {write_markdown(runs, plots, settings, setup_lines(settings))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
