"""Training on the CPU with torch: knowledge distillation (a small student learns from a
teacher's softened outputs and the labels) and transfer learning (a new head on a frozen
pretrained backbone). Both export the trained model to ONNX, checked like any conversion."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.optimize.convert import ConversionReport, convert
from modelport.optimize.data import Dataset
from modelport.optimize.errors import DataError, OptimizeError
from modelport.optimize.measure import run_model
from modelport.optimize.progress import Progress, silent
from modelport.optimize.students import build_student, parameter_count


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    path: Path
    parameters: int
    trainable: int
    final_loss: float
    conversion: ConversionReport


def teacher_logits(teacher: Path | str, data: Dataset, output: str | None = None) -> np.ndarray:
    """The teacher ONNX model's scores for `data`: logits, or log-probabilities when the chosen
    output already holds probabilities (rows of non-negative numbers summing to one)."""
    outputs = run_model(teacher, data)
    name = output or next(iter(outputs))
    if name not in outputs:
        raise DataError(f"the teacher has no output {name!r} (outputs: {list(outputs)})")
    scores = outputs[name].astype(np.float32)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise OptimizeError(
            f"the teacher's output {name!r} is shaped {scores.shape}; distillation needs class "
            "scores [N, classes] (pick one with --teacher-output)"
        )
    if scores.min() >= 0 and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        scores = np.log(np.clip(scores, 1e-8, 1.0))
    return scores


def distill(
    teacher: Path | str,
    data: Dataset,
    output: Path | str,
    *,
    student: str | Any = "small_mlp",
    temperature: float = 4.0,
    alpha: float = 0.7,
    teacher_output: str | None = None,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train `student` (a name from students.py or a torch module) on the ONNX `teacher`'s
    soft targets at `temperature`, weighted `alpha`, plus the labels (weight 1 - alpha) when
    `data` has them; export it to `output`."""
    import torch

    config = config or TrainConfig()
    if temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise OptimizeError("temperature must be positive and alpha in [0, 1]")
    logits = teacher_logits(teacher, data, teacher_output)
    x = np.asarray(data.x, dtype=np.float32)
    torch.manual_seed(config.seed)
    model = (
        build_student(student, x.shape[1:], logits.shape[1])
        if isinstance(student, str)
        else student
    )
    soft = torch.softmax(torch.from_numpy(logits) / temperature, dim=1)
    labels = None if data.y is None else torch.from_numpy(np.asarray(data.y, dtype=np.int64))
    weight = alpha if labels is not None else 1.0

    def loss_fn(scores: Any, rows: Any) -> Any:
        log_student = torch.log_softmax(scores / temperature, dim=1)
        loss = torch.nn.functional.kl_div(log_student, soft[rows], reduction="batchmean")
        loss = weight * loss * temperature**2
        if labels is not None:
            loss = loss + (1 - weight) * torch.nn.functional.cross_entropy(scores, labels[rows])
        return loss

    final = fit(model, torch.from_numpy(x), loss_fn, config, progress, "distilling")
    conversion = convert(model.eval(), data.take(slice(0, 64)), output)
    return TrainResult(
        Path(output), parameter_count(model), parameter_count(model), final, conversion
    )


def _tuned(backbone: Any, head: Any) -> Any:
    """Backbone and head as one module."""
    import torch

    class Tuned(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.head = head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scores: torch.Tensor = self.head(torch.flatten(self.backbone(x), 1))
            return scores

    return Tuned()


def load_backbone(source: Path | str) -> Any:
    """A pretrained torch model: TorchScript `.pt`, torch.export `.pt2`, or package.module:Name."""
    import torch

    path = Path(source)
    if path.suffix == ".pt" and path.is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript, still common
            # torch.jit.load has no annotations
            return torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    if path.suffix == ".pt2" and path.is_file():
        return torch.export.load(str(path)).module()
    if not path.exists() and ":" in str(source):
        from modelport.optimize.from_torch import import_object

        return import_object(str(source))
    raise OptimizeError(f"{source}: a backbone is a .pt or .pt2 file, or package.module:Name")


def finetune(
    backbone: Path | str | Any,
    data: Dataset,
    output: Path | str,
    *,
    num_classes: int,
    hidden: int = 0,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Freeze `backbone`, train a new classification head (a linear layer, or one hidden layer
    of `hidden` units) on `data`'s labels, and export backbone and head together."""
    import torch

    config = config or TrainConfig()
    labels = np.asarray(data.labels(), dtype=np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(
            f"labels must be 0..{num_classes - 1} for --num-classes {num_classes}; "
            f"the data has {labels.min()}..{labels.max()}"
        )
    trunk = load_backbone(backbone) if isinstance(backbone, str | Path) else backbone
    trunk.eval()
    for parameter in trunk.parameters():
        parameter.requires_grad_(False)
    x = torch.from_numpy(np.asarray(data.x, dtype=np.float32))
    with torch.no_grad():  # the backbone is frozen: its features are computed once
        features = trunk(x)
    if not isinstance(features, torch.Tensor):
        raise OptimizeError(
            f"the backbone returns a {type(features).__name__}; it must return one tensor of "
            "features"
        )
    features = torch.flatten(features, 1)
    torch.manual_seed(config.seed)
    width = features.shape[1]
    head = (
        torch.nn.Sequential(
            torch.nn.Linear(width, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, num_classes),
        )
        if hidden
        else torch.nn.Linear(width, num_classes)
    )
    target = torch.from_numpy(labels)

    def loss_fn(scores: Any, rows: Any) -> Any:
        return torch.nn.functional.cross_entropy(scores, target[rows])

    final = fit(head, features, loss_fn, config, progress, "fine-tuning")
    model = _tuned(trunk, head.eval()).eval()
    conversion = convert(model, data.take(slice(0, 64)), output)
    return TrainResult(
        Path(output), parameter_count(model), parameter_count(head), final, conversion
    )


def fit(
    model: Any,
    x: Any,
    loss_fn: Any,
    config: TrainConfig,
    progress: Progress | None,
    description: str,
) -> float:
    """Adam over shuffled mini-batches for `config.epochs`; `loss_fn(scores, rows)` scores the
    batch of row indices `rows`. Returns the last epoch's mean loss."""
    import torch

    if config.epochs < 1 or config.batch_size < 1:
        raise OptimizeError("epochs and batch size must be at least 1")
    progress = progress or silent()
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    task = progress.task(description, config.epochs)
    model.train()
    mean = float("nan")
    for _ in range(config.epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), config.batch_size):
            rows = order[start : start + config.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[rows]), rows)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
        mean = total / len(x)
        progress.advance(task, note=f"loss {mean:.4f}")
    model.eval()
    return mean
