"""Framework runtimes next to the same model converted to ONNX, and threads vs processes.

    python benchmarks/runtimes.py [--seconds 4] [--tag NAME]

Models (trained or built here, nothing downloaded; 64 input features like the digits set):
- mlp: a 64-256-256-10 torch MLP served as TorchScript (model.pt), as a torch.export program
  (model.pt2) and as ONNX exported by torch.onnx;
- forest / logreg: scikit-learn on the digits set, served by the sklearn runtime in worker
  processes (its default), in threads (`executor: thread`), and as ONNX converted by skl2onnx.

For each variant: the runtime in-process (our LoadedModel.infer, no server) at batch 1 and 32,
then `modelport serve` with only that model, driven by perf_analyzer (HTTP, binary tensors) at
concurrency 1 and 16. While the c=16 load runs, a probe asks /v2/health/live every 20 ms: its
p99 shows whether the model starves the event loop that answers every request.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loadgen import BENCH_DIR, BenchmarkError, Point, console, find_tools, perf_analyzer_point
from machine import cpu_model, git_state
from rich.progress import Progress
from rich.table import Table
from server_process import Server

from modelport.repository.config_file import parse_config
from modelport.runtimes.registry import RuntimeRegistry

RESULTS = BENCH_DIR / "results"
COMMON = """
max_batch_size: 64
dynamic_batching: {max_queue_delay: 0}
runtime: {intra_op_threads: 1%s}
"""


@dataclass
class Variant:
    family: str
    label: str
    files: dict[str, Any]
    config: str
    rows: list[str] = field(default_factory=list)


def mlp_variants(work: Path) -> list[Variant]:
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(64, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    ).eval()
    example = torch.zeros(2, 64)
    batch = torch.export.Dim("batch", min=1, max=1024)
    torchscript, exported, onnx_file = work / "mlp.pt", work / "mlp.pt2", work / "mlp.onnx"
    torch.jit.trace(module, example).save(str(torchscript))
    torch.export.save(
        torch.export.export(module, (example,), dynamic_shapes=({0: batch},)), str(exported)
    )
    torch.onnx.export(
        module,
        (example,),
        str(onnx_file),
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        external_data=False,  # one self-contained file, like the other variants
        verbose=False,
    )
    tensors = """
inputs: [{name: input, datatype: FP32, shape: [-1, 64]}]
outputs: [{name: output, datatype: FP32, shape: [-1, 10]}]
"""
    return [
        Variant("mlp", "torch (TorchScript)", {"model.pt": torchscript}, COMMON % "" + tensors),
        Variant("mlp", "torch (torch.export)", {"model.pt2": exported}, COMMON % ""),
        Variant("mlp", "onnx (torch.onnx)", {"model.onnx": onnx_file}, COMMON % ""),
    ]


def sklearn_variants(work: Path) -> list[Variant]:
    import joblib
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target
    variants = []
    for family, estimator in (
        ("forest", RandomForestClassifier(n_estimators=50, max_depth=10, random_state=0)),
        ("logreg", LogisticRegression(max_iter=2000)),
    ):
        estimator.fit(x, y)
        pickled, converted = work / f"{family}.joblib", work / f"{family}.onnx"
        joblib.dump(estimator, pickled)
        onnx_model = to_onnx(estimator, x[:1], options={id(estimator): {"zipmap": False}})
        converted.write_bytes(onnx_model.SerializeToString())
        trusted = "trust: true\ninputs: [{name: input, datatype: FP32, shape: [-1, 64]}]\n"
        variants += [
            Variant(family, "sklearn, processes", {"model.joblib": pickled}, COMMON % "" + trusted),
            Variant(
                family,
                "sklearn, threads",
                {"model.joblib": pickled},
                COMMON % ", executor: thread" + trusted,
            ),
            Variant(family, "onnx (skl2onnx)", {"model.onnx": converted}, COMMON % ""),
        ]
    return variants


def write_repo(variant: Variant, root: Path) -> Path:
    version = root / variant.family / "1"
    version.mkdir(parents=True)
    for name, source in variant.files.items():
        (version / name).write_bytes(source.read_bytes())
    (root / variant.family / "config.yaml").write_text(textwrap.dedent(variant.config))
    return root


def in_process(variant: Variant, repo: Path, seconds: float) -> dict[int, tuple[float, float]]:
    """(p50 ms, inferences/s) per batch size for the runtime's own infer, no server."""
    config = parse_config((repo / variant.family / "config.yaml").read_text(), variant.family)
    version = repo / variant.family / "1"
    runtime = RuntimeRegistry().runtime_for(version, config)
    model = runtime.load(version, config)
    spec = model.signature().inputs[0] if model.signature().inputs else None
    name = spec.name if spec else "input"
    dtype = np.float64 if spec and spec.datatype.value == "FP64" else np.float32
    results = {}
    for batch in (1, 32):
        x = np.random.default_rng(0).random((batch, 64)).astype(dtype)
        model.infer({name: x}, None)
        times = []
        deadline = time.perf_counter() + seconds / 2
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            model.infer({name: x}, None)
            times.append(time.perf_counter() - start)
        results[batch] = (statistics.median(times) * 1e3, batch * len(times) / sum(times))
    model.close()
    return results


class LivenessProbe:
    """GET /v2/health/live every 20 ms on one keep-alive connection; latencies in ms."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._stop = threading.Event()
        self.latencies: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LivenessProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=10)
        while not self._stop.wait(0.02):
            start = time.perf_counter()
            connection.request("GET", "/v2/health/live")
            connection.getresponse().read()
            self.latencies.append((time.perf_counter() - start) * 1e3)

    def p99(self) -> float:
        return float(np.percentile(self.latencies, 99)) if self.latencies else float("nan")


def served(
    variant: Variant, repo: Path, seconds: float, logs: Path, progress: Progress
) -> tuple[dict[int, Point], float, float]:
    tools = find_tools(None)
    server = Server(repo, logs / f"{variant.family}-{slug(variant.label)}.log", [])
    server.start()
    try:
        ready = server.wait_ready(120)
        points = {}
        probe = LivenessProbe(server.http_port)
        for concurrency in (1, 16):
            task = progress.add_task(f"{variant.family} {variant.label} c={concurrency}", total=1)
            with probe if concurrency == 16 else contextlib.nullcontext():
                points[concurrency] = perf_analyzer_point(
                    tools,
                    server.http_port,
                    "binary",
                    concurrency,
                    seconds,
                    model=variant.family,
                    host="127.0.0.1",
                    log=logs / f"pa-{variant.family}-{slug(variant.label)}-c{concurrency}.log",
                    progress=progress,
                    task=task,
                )
        return points, probe.p99(), ready
    finally:
        server.stop()


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measured point")
    parser.add_argument("--tag", default="run")
    args = parser.parse_args(argv)
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="mp-runtimes-") as tmp:
        work = Path(tmp)
        logs = work / "logs"
        logs.mkdir()
        console.log("building models (torch, torch.onnx, scikit-learn, skl2onnx)")
        variants = mlp_variants(work) + sklearn_variants(work)
        with Progress(console=console, transient=True) as progress:
            for number, variant in enumerate(variants):
                repo = write_repo(variant, work / f"repo{number}")
                local = in_process(variant, repo, args.seconds)
                try:
                    points, live_p99, ready = served(variant, repo, args.seconds, logs, progress)
                except BenchmarkError as exc:
                    console.log(f"[red]{variant.family} {variant.label}: {exc}")
                    return 1
                rows.append(
                    [
                        variant.family,
                        variant.label,
                        f"{local[1][0]:.3f}",
                        f"{local[32][1]:,.0f}",
                        f"{points[1].p50_ms:.2f}",
                        f"{points[16].inf_per_s:,.0f}",
                        f"{points[16].p99_ms:.1f}",
                        f"{live_p99:.1f}",
                        f"{ready:.1f}",
                    ]
                )
    headers = [
        "model",
        "served as",
        "in-process p50 b=1 (ms)",
        "in-process inf/s b=32",
        "served p50 c=1 (ms)",
        "served inf/s c=16",
        "served p99 c=16 (ms)",
        "/health/live p99 under load (ms)",
        "ready (s)",
    ]
    table = Table(*headers, title="framework runtimes vs ONNX")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    write_markdown(headers, rows, args)
    return 0


def write_markdown(headers: list[str], rows: list[list[str]], args: argparse.Namespace) -> None:
    date = dt.date.today().isoformat()
    path = RESULTS / f"runtimes-{date}-{args.tag}.md"
    lines = [
        f"# Framework runtimes vs the same model in ONNX ({date})",
        "",
        f"- machine: {cpu_model()}; git {git_state()}; python {sys.version.split()[0]}",
        f"- command: `python benchmarks/runtimes.py --seconds {args.seconds:g} --tag {args.tag}`",
        "- every variant: 1 instance, intra-op threads 1, dynamic batching (delay 0), "
        "perf_analyzer HTTP binary tensors, batch 1 per request",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    path.write_text("\n".join(lines))
    console.log(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
