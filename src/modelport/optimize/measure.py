"""Measuring an ONNX model in-process: size, quality on labelled data, latency at batch 1 and
32, throughput and peak memory.

Each model is measured in a fresh spawned process, so one model's memory and threads never
colour another's numbers, and peak memory is the growth of that process's peak resident set
while it loads the model and runs it.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.optimize.data import Dataset
from modelport.optimize.errors import DataError
from modelport.optimize.metrics import get_metric, predictions, score

BATCH_SIZES = (1, 32)
EVAL_BATCH = 256


@dataclass(frozen=True)
class Latency:
    batch: int
    p50_ms: float
    p99_ms: float
    runs: int

    @property
    def throughput(self) -> float:
        """Samples per second at this batch size, from the median run."""
        return self.batch / (self.p50_ms / 1e3)


@dataclass(frozen=True)
class Measurement:
    size_bytes: int
    compressed_bytes: int
    metric: str | None
    value: float | None
    latency: tuple[Latency, ...]
    peak_memory_mb: float

    def latency_at(self, batch: int) -> Latency | None:
        return next((entry for entry in self.latency if entry.batch == batch), None)

    @property
    def throughput(self) -> float | None:
        if not self.latency:
            return None
        return max(entry.throughput for entry in self.latency)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latency"] = {
            str(entry.batch): {"p50_ms": entry.p50_ms, "p99_ms": entry.p99_ms, "runs": entry.runs}
            for entry in self.latency
        }
        data["throughput_per_s"] = self.throughput
        return data


@dataclass(frozen=True)
class MeasureOptions:
    metric: str | None = "accuracy"
    output: str | None = None
    batch_sizes: Sequence[int] = BATCH_SIZES
    seconds: float = 0.5
    threads: int = 1
    isolate: bool = True


def file_size(path: Path) -> tuple[int, int]:
    """Bytes on disk and bytes after zlib (what pruned zeros save when shipped compressed)."""
    raw = path.read_bytes()
    return len(raw), len(zlib.compress(raw, 6))


def measure(path: Path | str, data: Dataset, options: MeasureOptions | None = None) -> Measurement:
    """Measure one ONNX model on `data` (labels needed for the metric)."""
    options = options or MeasureOptions()
    path = Path(path)
    if options.metric is not None:
        get_metric(options.metric)  # a bad name fails here, not in the worker
        data.labels()
    if not options.isolate:
        return _measure(str(path), data, options)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_measure, str(path), data, options).result()


def _measure(path: str, data: Dataset, options: MeasureOptions) -> Measurement:
    peak = PeakMemory()
    session = _session(path, options.threads)
    feeds = _feeds(session, data)
    latency = tuple(
        _latency(session, feeds, batch, options.seconds)
        for batch in options.batch_sizes
        if _accepts_batch(session, batch)
    )
    grown = peak.growth_mb()
    value = None
    if options.metric is not None:
        value = _evaluate(session, feeds, data.labels(), options)
    size, compressed = file_size(Path(path))
    return Measurement(size, compressed, options.metric, value, latency, round(grown, 2))


def run_model(path: Path | str, data: Dataset, threads: int = 1) -> dict[str, np.ndarray]:
    """All outputs of an ONNX model on `data`, in one call (for checks and tests)."""
    session = _session(str(path), threads)
    names = [arg.name for arg in session.get_outputs()]
    return dict(zip(names, session.run(names, _feeds(session, data)), strict=True))


def _session(path: str, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _feeds(session: Any, data: Dataset) -> dict[str, np.ndarray]:
    """The data's arrays for the model's inputs, in the dtypes the model declares."""
    from modelport.runtimes.onnx import ORT_TYPES

    dtypes = {arg.name: ORT_TYPES.get(arg.type) for arg in session.get_inputs()}
    feeds: dict[str, np.ndarray] = {}
    for name, array in data.feeds(list(dtypes)).items():
        dtype = dtypes[name]
        feeds[name] = array if dtype is None else np.ascontiguousarray(array, dtype.numpy_dtype)
    return feeds


def _evaluate(
    session: Any, feeds: dict[str, np.ndarray], truth: np.ndarray, options: MeasureOptions
) -> float:
    metric = get_metric(options.metric or "accuracy")
    outputs = [arg.name for arg in session.get_outputs()]
    wanted = options.output or outputs[0]
    if wanted not in outputs:
        raise DataError(f"the model has no output {wanted!r} (outputs: {outputs})")
    rows = len(truth)
    parts = [
        session.run([wanted], {n: a[start : start + EVAL_BATCH] for n, a in feeds.items()})[0]
        for start in range(0, rows, EVAL_BATCH)
    ]
    predicted = predictions(np.concatenate(parts), classification=metric.classification)
    return score(metric, truth, predicted)


def _latency(session: Any, feeds: dict[str, np.ndarray], batch: int, seconds: float) -> Latency:
    rows = len(next(iter(feeds.values())))
    index = np.arange(batch) % rows
    batch_feeds = {name: np.ascontiguousarray(array[index]) for name, array in feeds.items()}
    for _ in range(5):
        session.run(None, batch_feeds)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 20 or (time.perf_counter() < deadline and len(times) < 20000):
        start = time.perf_counter()
        session.run(None, batch_feeds)
        times.append(time.perf_counter() - start)
    p50, p99 = np.percentile(np.array(times) * 1e3, [50, 99])
    return Latency(batch, round(float(p50), 4), round(float(p99), 4), len(times))


def _accepts_batch(session: Any, batch: int) -> bool:
    for arg in session.get_inputs():
        first = arg.shape[0] if arg.shape else None
        if isinstance(first, int) and first != batch:
            return False
    return True


class PeakMemory:
    """Growth of this process's peak resident set from now. On Linux the kernel's high-water
    mark is reset first (/proc/self/clear_refs), so a peak reached earlier (while importing,
    say) does not hide this one; elsewhere the peak so far is the baseline."""

    def __init__(self) -> None:
        self._linux = _reset_high_water_mark()
        self._start = _status_kb("VmRSS") / 1024 if self._linux else _max_rss_mb()

    def growth_mb(self) -> float:
        peak = _status_kb("VmHWM") / 1024 if self._linux else _max_rss_mb()
        return max(peak - self._start, 0.0)


def _reset_high_water_mark() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _status_kb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return 0.0


def _max_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
