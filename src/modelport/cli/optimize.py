"""`modelport convert | optimize | distill | finetune`: thin commands over modelport.optimize.

Exit codes: 0 done (and deployed, if asked); 1 an error, named; 3 the accuracy gate refused the
result, so nothing was deployed (the report says by how much).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])
GATE_REFUSED = 3

DATA = click.Path(exists=True, dir_okay=False, path_type=Path)


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


measured = _stack(
    click.option("--eval", "eval_path", type=DATA, help="Labelled data to measure on (.npz/.csv)."),
    click.option(
        "--metric",
        type=click.Choice(["accuracy", "f1", "mae", "rmse"]),
        default="accuracy",
        show_default=True,
    ),
    click.option("--target", default=None, help="The label column of a CSV file (default y)."),
    click.option("--output-name", default=None, help="The model output to score (default first)."),
    click.option(
        "--max-accuracy-drop",
        type=float,
        default=None,
        help="Budget: points for accuracy/f1, percent for mae/rmse. Beyond it: exit 3, "
        "nothing deployed (default 1.0 when deploying).",
    ),
    click.option(
        "--deploy", "deploy_to", default=None, help="REPOSITORY/NAME: publish the result."
    ),
    click.option("--label", default=None, help="With --deploy: a label for the new version."),
    click.option("--traffic", type=float, default=None, help="With --label: percent of requests."),
    click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), default=None),
    click.option("--bench-seconds", type=float, default=0.5, show_default=True),
    click.option("--threads", type=int, default=1, show_default=True, help="intra-op threads."),
    click.option("--quiet", is_flag=True, help="No progress bars."),
)

trained = _stack(
    click.option("--epochs", type=int, default=30, show_default=True),
    click.option("--batch-size", type=int, default=64, show_default=True),
    click.option("--lr", "learning_rate", type=float, default=3e-3, show_default=True),
    click.option("--seed", type=int, default=0, show_default=True),
)


@contextmanager
def _reporting() -> Iterator[Console]:
    """Errors of the toolkit become one line and exit 1; a refused gate exits 3."""
    from modelport.optimize import GateRefused, OptimizeError

    console = Console(stderr=True, soft_wrap=True)
    try:
        yield console
    except GateRefused as exc:
        if exc.report is not None:
            exc.report.show(_wide())
        console.print(f"[red]{exc}[/red]")
        sys.exit(GATE_REFUSED)
    except OptimizeError as exc:
        raise click.ClickException(str(exc)) from None


def _wide() -> Console:
    """The report table is wide; off a terminal (a log, a pipe) do not wrap it at 80."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def _progress(quiet: bool) -> Any:
    from modelport.optimize.progress import Progress

    return Progress(enabled=not quiet, console=Console(stderr=True))


def _context(options: dict[str, Any]) -> dict[str, Any]:
    """The evaluation data, measurement options, gate and deployment the options ask for."""
    from modelport.optimize import Deployment, MeasureOptions, load_data

    evaluation = (
        load_data(options["eval_path"], target=options["target"]) if options["eval_path"] else None
    )
    deployment = None
    max_drop = options["max_accuracy_drop"]
    if options["deploy_to"]:
        if evaluation is None or evaluation.y is None:
            raise click.UsageError(
                "--deploy needs --eval data with labels (y): nothing is deployed unmeasured"
            )
        deployment = Deployment.parse(
            options["deploy_to"], label=options["label"], traffic=options["traffic"]
        )
        max_drop = 1.0 if max_drop is None else max_drop
    elif options["label"] or options["traffic"] is not None:
        raise click.UsageError("--label and --traffic go with --deploy")
    measure = MeasureOptions(
        metric=options["metric"] if evaluation is not None and evaluation.y is not None else None,
        output=options["output_name"],
        seconds=options["bench_seconds"],
        threads=options["threads"],
    )
    return {
        "evaluation": evaluation,
        "measure_options": measure,
        "max_drop": max_drop,
        "deployment": deployment,
    }


@click.command()
@click.argument("source")
@click.option("--example-input", type=DATA, required=True, help="Sample inputs (.npz x / .csv).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--weights", type=DATA, default=None, help="A state dict for package.module:Name.")
@click.option("--trust", is_flag=True, help="Load a pickle (.joblib/.pkl): it runs code.")
@click.option("--atol", type=float, default=1e-4, show_default=True)
@click.option("--rtol", type=float, default=1e-3, show_default=True)
def convert(source: str, example_input: Path, output: Path, **options: Any) -> None:
    """Convert a torch, scikit-learn, XGBoost, LightGBM, Keras or TensorFlow model to ONNX and
    check it gives the original's outputs on the example input."""
    from modelport.optimize import convert as run_convert
    from modelport.optimize import load_data

    with _reporting() as console:
        sample = load_data(example_input)
        report = run_convert(source, sample, output, **options)
        target = output.with_name(output.name.removesuffix(".onnx") + ".convert.json")
        target.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
        console.print(
            f"{report.framework} -> {output}: inputs {list(report.inputs)}, outputs "
            f"{list(report.outputs)}; max abs diff {report.max_abs:.3g}, max rel diff "
            f"{report.max_rel:.3g} on {len(sample)} samples (report {target})"
        )


@click.command()
@click.argument("model", type=DATA)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where the result goes (default MODEL.<steps>.onnx beside MODEL).",
)
@click.option("--quantize", type=click.Choice(["int8-dynamic", "int8-static", "fp16"]))
@click.option("--calibration", type=DATA, default=None, help="Data for int8-static (.npz).")
@click.option(
    "--calibration-method",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    default="minmax",
    show_default=True,
)
@click.option("--per-channel", is_flag=True, help="Quantize weights per output channel.")
@click.option("--fp16-io", is_flag=True, help="fp16 inputs and outputs too (default float32).")
@click.option(
    "--prune",
    "prune_fraction",
    type=float,
    default=None,
    help="Fraction of weights to zero by magnitude, e.g. 0.5.",
)
@click.option(
    "--prune-structure",
    type=click.Choice(["unstructured", "channel"]),
    default="unstructured",
    show_default=True,
)
@click.option(
    "--graph",
    type=click.Choice(["basic", "extended", "all"]),
    default=None,
    help="Save onnxruntime's graph optimizations at this level.",
)
@measured
def optimize(model: Path, output: Path | None, **options: Any) -> None:
    """Optimize an ONNX model (prune, then graph-optimize, then quantize), measure it against
    the original, and deploy it if it stays within the accuracy budget."""
    from modelport.optimize import Plan, load_data, optimize_model

    with _reporting() as console:
        plan = Plan(
            prune=options["prune_fraction"],
            structure=options["prune_structure"],
            graph=options["graph"],
            quantize=options["quantize"],
            calibration_method=options["calibration_method"],
            per_channel=options["per_channel"],
            keep_io_types=not options["fp16_io"],
        )
        context = _context(options)
        if context["evaluation"] is None:
            raise click.UsageError("optimize needs --eval data to measure the result on")
        calibration = load_data(options["calibration"]) if options["calibration"] else None
        if output is None:
            suffix = re.sub(
                r"[^A-Za-z0-9]+", "-", "-".join(name for _, name in plan.steps())
            ).strip("-")
            output = model.with_name(f"{model.name.removesuffix('.onnx')}.{suffix}.onnx")
        with _progress(options["quiet"]) as progress:
            outcome = optimize_model(
                model,
                output,
                plan,
                context["evaluation"],
                calibration=calibration,
                measure_options=context["measure_options"],
                max_drop=context["max_drop"],
                deployment=context["deployment"],
                report_dir=options["report_dir"],
                progress=progress,
            )
        outcome.report.show(_wide())
        console.print(f"wrote {outcome.output} and {', '.join(map(str, outcome.files))}")


@click.command()
@click.argument("teacher", type=DATA)
@click.option(
    "--student",
    default="small_mlp",
    show_default=True,
    help="tiny_mlp, small_mlp, small_cnn, mlp:W1,W2, cnn:C1,C2 or package.module:Name.",
)
@click.option("--data", "data_path", type=DATA, required=True, help="Training data (.npz x, y).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--temperature", type=float, default=4.0, show_default=True)
@click.option(
    "--alpha",
    type=float,
    default=0.7,
    show_default=True,
    help="Weight of the teacher's soft targets; the labels get the rest.",
)
@click.option("--teacher-output", default=None, help="The teacher output with class scores.")
@trained
@measured
def distill(teacher: Path, data_path: Path, output: Path, **options: Any) -> None:
    """Train a small student on an ONNX teacher's soft targets and export it to ONNX."""
    from modelport.optimize import TrainConfig, load_data
    from modelport.optimize import distill as run_distill

    with _reporting() as console:
        context = _context(options)
        data = load_data(data_path, target=options["target"])
        with _progress(options["quiet"]) as progress:
            result = run_distill(
                teacher,
                data,
                output,
                student=options["student"],
                temperature=options["temperature"],
                alpha=options["alpha"],
                teacher_output=options["teacher_output"],
                config=_train_config(options, TrainConfig),
                progress=progress,
            )
            notes = {"parameters": result.parameters, "final_loss": round(result.final_loss, 5)}
            outcome = _assessed(
                "distill", ("teacher", teacher), output, notes, context, options, progress
            )
        _show(outcome, console, f"student: {result.parameters:,} parameters -> {output}")


@click.command()
@click.argument("backbone")
@click.option("--data", "data_path", type=DATA, required=True, help="Training data (.npz x, y).")
@click.option("--num-classes", type=int, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--hidden", type=int, default=0, help="Units of a hidden layer in the new head.")
@trained
@measured
def finetune(
    backbone: str, data_path: Path, num_classes: int, output: Path, **options: Any
) -> None:
    """Transfer learning: freeze a pretrained torch backbone (.pt, .pt2 or package.module:Name),
    train a new head on your labels, and export the whole model to ONNX."""
    from modelport.optimize import TrainConfig, load_data
    from modelport.optimize import finetune as run_finetune

    with _reporting() as console:
        context = _context(options)
        data = load_data(data_path, target=options["target"])
        with _progress(options["quiet"]) as progress:
            result = run_finetune(
                backbone,
                data,
                output,
                num_classes=num_classes,
                hidden=options["hidden"],
                config=_train_config(options, TrainConfig),
                progress=progress,
            )
            notes = {
                "parameters": result.parameters,
                "trainable": result.trainable,
                "final_loss": round(result.final_loss, 5),
            }
            outcome = _assessed("finetune", None, output, notes, context, options, progress)
        _show(
            outcome,
            console,
            f"{result.trainable:,} of {result.parameters:,} parameters trained -> {output}",
        )


def _train_config(options: dict[str, Any], config_type: Any) -> Any:
    return config_type(
        options["epochs"], options["batch_size"], options["learning_rate"], options["seed"]
    )


def _assessed(
    command: str,
    baseline: tuple[str, Path] | None,
    output: Path,
    notes: dict[str, Any],
    context: dict[str, Any],
    options: dict[str, Any],
    progress: Any,
) -> Any:
    """Measure, judge and deploy a trained model when --eval is given."""
    from modelport.optimize import assess, finish

    if context["evaluation"] is None:
        return None
    name = command if baseline is None else "student"
    report = assess(
        command,
        baseline,
        [(name, output, notes)],
        context["evaluation"],
        context["measure_options"],
        progress,
    )
    return finish(
        report,
        output,
        context["max_drop"],
        context["deployment"],
        options["report_dir"] or output.parent,
        progress,
    )


def _show(outcome: Any, console: Console, summary: str) -> None:
    console.print(summary)
    if outcome is not None:
        outcome.report.show(_wide())
        console.print(f"reports: {', '.join(map(str, outcome.files))}")


COMMANDS = (convert, optimize, distill, finetune)
