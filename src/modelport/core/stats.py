"""Per model-version statistics in the shape of Triton's statistics extension.

Plain integer counters updated on the event loop thread after each request: cheap, and read by
perf_analyzer to split latency into queue and compute time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict


class DurationView(TypedDict):
    count: int
    ns: int


class BatchStatistics(TypedDict):
    batch_size: int
    compute_input: DurationView
    compute_infer: DurationView
    compute_output: DurationView


class ModelStatistics(TypedDict):
    """One version's statistics in the shape of Triton's statistics extension."""

    name: str
    version: str
    last_inference: int
    inference_count: int
    execution_count: int
    inference_stats: dict[str, DurationView]
    batch_stats: list[BatchStatistics]


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns

    def as_dict(self) -> DurationView:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class MovingAverage:
    """Moving average of one run's duration: each new run weighs 1/5, so a change in the
    model's speed shows within a few runs (what the batcher and the thread host decide on)."""

    ns: float = 0.0

    def add(self, ns: int) -> None:
        self.ns += (ns - self.ns) * 0.2


@dataclass(slots=True)
class BatchStat:
    batch_size: int
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class VersionStats:
    """Counters for one loaded model version."""

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStat] = field(default_factory=dict)

    def record_success(
        self, *, now_ms: int, batch_size: int, total_ns: int, queue_ns: int, infer_ns: int
    ) -> None:
        """One request answered (it may have shared its execution with others)."""
        self.last_inference_ms = now_ms
        self.inference_count += batch_size
        self.success.add(total_ns)
        self.queue.add(queue_ns)
        self.compute_input.add(0)
        self.compute_infer.add(infer_ns)
        self.compute_output.add(0)

    def record_execution(self, *, batch_size: int, infer_ns: int) -> None:
        """One run of the model, on a batch of batch_size inferences."""
        self.execution_count += 1
        batch = self.batches.get(batch_size)
        if batch is None:
            batch = self.batches[batch_size] = BatchStat(batch_size)
        batch.compute_input.add(0)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(0)

    def record_failure(self, *, now_ms: int, total_ns: int) -> None:
        self.last_inference_ms = now_ms
        self.fail.add(total_ns)

    def as_triton(self, name: str, version: str) -> ModelStatistics:
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {
                    "batch_size": stat.batch_size,
                    "compute_input": stat.compute_input.as_dict(),
                    "compute_infer": stat.compute_infer.as_dict(),
                    "compute_output": stat.compute_output.as_dict(),
                }
                for _, stat in sorted(self.batches.items())
            ],
        }
