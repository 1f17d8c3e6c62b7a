"""A model's configuration (`REPO/NAME/config.yaml`), validated with pydantic.

Every field has a default or is read from the model file, so a bare model needs no config at all.
Shapes are written in v2 terms: the batch dimension included, -1 for a dimension of any size.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from modelport.core.limits import RateLimit
from modelport.core.slo_config import SloConfig
from modelport.core.types import DataType, TensorSpec

LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")

MAX_CONFIG_BYTES = 1 << 20

DEFAULT_MAX_BATCH_SIZE = 1024
"""Largest batch a request may carry when the model's first dimension is dynamic and the config
names no max_batch_size."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorConfig(_Strict):
    name: str = Field(min_length=1)
    datatype: DataType
    shape: tuple[int, ...]

    @field_validator("datatype", mode="before")
    @classmethod
    def _parse_datatype(cls, value: object) -> DataType:
        return value if isinstance(value, DataType) else DataType.parse(value)

    @field_validator("shape")
    @classmethod
    def _dims_valid(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if any(dim < -1 or dim == 0 for dim in shape):
            raise ValueError(f"dimensions must be positive or -1, got {list(shape)}")
        return shape

    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.datatype, self.shape)


class VersionPolicy(_Strict):
    """Which of the version directories on disk are served (Triton's version_policy)."""

    latest: int | None = Field(default=None, ge=1)
    all: bool = False
    specific: tuple[int, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _accept_short_forms(cls, value: Any) -> Any:
        if value == "all":
            return {"all": True}
        if isinstance(value, dict) and "all" in value and value["all"] in ({}, None):
            return {**value, "all": True}
        return value

    @model_validator(mode="after")
    def _one_policy(self) -> VersionPolicy:
        chosen = sum([self.latest is not None, self.all, self.specific is not None])
        if chosen > 1:
            raise ValueError("version_policy takes one of latest, all, specific")
        if self.specific is not None and any(v < 1 for v in self.specific):
            raise ValueError("specific versions must be positive integers")
        return self

    def select(self, available: list[int]) -> list[int]:
        versions = sorted(available)
        if self.all:
            return versions
        if self.specific is not None:
            return [v for v in versions if v in self.specific]
        return versions[-(self.latest or 1) :]

    def as_triton(self) -> dict[str, Any]:
        if self.all:
            return {"all": {}}
        if self.specific is not None:
            return {"specific": {"versions": list(self.specific)}}
        return {"latest": {"num_versions": self.latest or 1}}


GraphOptimizationLevel = Literal["disable", "basic", "extended", "all"]


class RuntimeOptions(_Strict):
    """Options for the runtime that runs the model; each runtime reads the ones it understands."""

    intra_op_threads: int | None = Field(default=None, ge=0)
    inter_op_threads: int | None = Field(default=None, ge=0)
    execution_providers: tuple[str, ...] = ()
    graph_optimization_level: GraphOptimizationLevel = "all"
    allow_spinning: bool | None = None
    executor: Literal["auto", "thread", "process"] = "auto"
    """Where batches run: `thread` (a thread per instance), `process` (a worker process per
    instance, each with its own copy of the model), or `auto`: threads for runtimes that release
    the GIL, processes for those that hold it."""
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:[0-9]{1,2})?)$")
    """For runtimes that place the model on a device (torch): auto picks CUDA when present."""


_DELAY_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_delay(value: object) -> float:
    """A delay in seconds from '500us', '2ms', '0.1s', or a bare number of milliseconds."""
    if isinstance(value, bool):
        raise ValueError("a delay must be a number of milliseconds or a string like '2ms'")
    if isinstance(value, int | float):
        seconds = float(value) / 1000
    elif isinstance(value, str):
        text = value.strip().lower()
        unit = next((u for u in ("us", "ms", "s") if text.endswith(u)), None)
        if unit is None:
            raise ValueError(f"delay {value!r} needs a unit: us, ms or s")
        try:
            seconds = float(text[: -len(unit)]) * _DELAY_UNITS[unit]
        except ValueError:
            raise ValueError(f"delay {value!r} is not a number with a unit") from None
    else:
        raise ValueError("a delay must be a number of milliseconds or a string like '2ms'")
    if not 0 <= seconds <= 60:
        raise ValueError(f"delay {value!r} must be between 0 and 60 s")
    return seconds


class DynamicBatching(_Strict):
    """Joins concurrent requests to one model version into batches (Triton's dynamic batcher)."""

    max_batch_size: int | None = Field(default=None, ge=1)
    """Largest batch the batcher forms; defaults to the model's max_batch_size."""
    max_queue_delay: float = 0.0
    """Seconds the oldest queued request may wait for more to join ('2ms', '500us', or ms)."""
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int | None = Field(default=None, ge=1)
    """Requests waiting beyond this are refused at once with 503 / UNAVAILABLE."""

    @field_validator("max_queue_delay", mode="before")
    @classmethod
    def _delay(cls, value: object) -> float:
        return parse_delay(value)

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _positive(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if any(size < 1 for size in sizes):
            raise ValueError("preferred batch sizes must be positive")
        return tuple(sorted(set(sizes)))


class RateLimitConfig(_Strict):
    """A token bucket: up to `burst` requests at once, refilled at `requests_per_second`."""

    requests_per_second: float = Field(gt=0, allow_inf_nan=False, strict=True)
    burst: int | None = Field(default=None, ge=1, strict=True)
    """Defaults to one second's worth of requests (at least 1)."""

    def limit(self) -> RateLimit:
        burst = self.burst or max(1, math.ceil(self.requests_per_second))
        return RateLimit(self.requests_per_second, burst)


class PipelineStep(_Strict):
    """One model a pipeline calls, and how its tensors connect to the pipeline's."""

    model: str = Field(min_length=1)
    version: str | None = None
    """A version number or label; by default the step's model routes as usual."""
    inputs: dict[str, str] = Field(default_factory=dict)
    """Step input name -> pipeline tensor it reads (a pipeline input or an earlier output)."""
    outputs: dict[str, str] = Field(default_factory=dict)
    """Step output name -> pipeline tensor it writes."""

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _connected(self) -> PipelineStep:
        if not self.inputs or not self.outputs:
            raise ValueError(f"step '{self.model}' needs at least one input and one output")
        return self


class ModelConfig(_Strict):
    name: str | None = None
    platform: str | None = None
    default_model_filename: str | None = None
    max_batch_size: int | None = Field(default=None, ge=0)
    inputs: tuple[TensorConfig, ...] = ()
    outputs: tuple[TensorConfig, ...] = ()
    version_policy: VersionPolicy = VersionPolicy()
    runtime: RuntimeOptions = RuntimeOptions()
    dynamic_batching: DynamicBatching | None = None
    instance_count: int = Field(default=1, ge=1, le=64)
    """Batches (or unbatched requests) of one version that run at once, each on its own thread."""
    parameters: dict[str, Any] = Field(default_factory=dict)
    labels: dict[str, int] = Field(default_factory=dict)
    """Names for versions (`stable: 3`); a request may name a label where it names a version."""
    traffic: dict[int, float] = Field(default_factory=dict)
    """How requests that name no version are split between versions, by weight (`{3: 90, 4: 10}`).
    Without it they go to the newest ready version."""
    trust: bool = False
    """Allow model files that run code when loaded (pickle, joblib). Only for files you made."""
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    """The model file's SHA-256; a file that does not match is refused."""
    pipeline: tuple[PipelineStep, ...] = ()
    """Other models run in order as one (Triton's ensembles); inputs/outputs are the pipeline's."""
    rate_limit: RateLimitConfig | None = None
    """Requests to the model (all its versions together) past this rate get 429."""
    max_in_flight: int | None = Field(default=None, ge=1, strict=True)
    """Requests the model (all its versions together) decodes or runs at once; more get 429."""
    slo: SloConfig | None = None
    """Objectives each version is held to; a breach raises an alert (and can roll a canary
    back)."""

    def labels_of(self, version: int) -> list[str]:
        return sorted(label for label, number in self.labels.items() if number == version)

    def routing(self, version: int) -> dict[str, Any]:
        """The labels naming a version and its traffic share, as index rows show them."""
        fields: dict[str, Any] = {}
        labels = self.labels_of(version)
        if labels:
            fields["labels"] = labels
        if version in self.traffic:
            fields["traffic"] = self.traffic[version]
        return fields

    @field_validator("labels")
    @classmethod
    def _label_names(cls, labels: dict[str, int]) -> dict[str, int]:
        for label, version in labels.items():
            if not LABEL.fullmatch(label):
                raise ValueError(
                    f"label {label!r} must start with a letter and hold only letters, digits, "
                    "'-' and '_' (a label never looks like a version number)"
                )
            if version < 1:
                raise ValueError(f"label {label!r} points at version {version}; versions are >= 1")
        return labels

    @field_validator("traffic")
    @classmethod
    def _weights(cls, traffic: dict[int, float]) -> dict[int, float]:
        if any(version < 1 for version in traffic):
            raise ValueError("traffic names versions, which are positive integers")
        if any(weight < 0 for weight in traffic.values()):
            raise ValueError("traffic weights must not be negative")
        if traffic and sum(traffic.values()) <= 0:
            raise ValueError("traffic weights must not all be 0")
        return traffic

    @field_validator("sha256", mode="before")
    @classmethod
    def _quoted_digest(cls, value: object) -> object:
        if value is not None and not isinstance(value, str):
            raise ValueError('write the digest as a quoted string: sha256: "9f2c..."')
        return value

    @field_validator("default_model_filename")
    @classmethod
    def _plain_file_name(cls, value: str | None) -> str | None:
        if value is not None and (value in ("", ".", "..") or "/" in value or "\\" in value):
            raise ValueError("default_model_filename must be a file name, not a path")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> ModelConfig:
        for kind, tensors in (("input", self.inputs), ("output", self.outputs)):
            names = [t.name for t in tensors]
            if len(names) != len(set(names)):
                raise ValueError(f"duplicate {kind} names in {names}")
        if self.pipeline:
            _check_pipeline(self)
        return self


def _check_pipeline(config: ModelConfig) -> None:
    """Every step reads tensors that exist by then, each tensor has one producer, and every
    pipeline output is produced."""
    if config.platform not in (None, "pipeline"):
        raise ValueError(f"a pipeline's platform is 'pipeline', not '{config.platform}'")
    if not config.inputs or not config.outputs:
        raise ValueError("a pipeline lists its inputs and outputs in config.yaml")
    available = {tensor.name for tensor in config.inputs}
    for number, step in enumerate(config.pipeline, 1):
        if config.name is not None and step.model == config.name:
            raise ValueError(f"pipeline step {number} calls the pipeline itself")
        missing = sorted(set(step.inputs.values()) - available)
        if missing:
            raise ValueError(
                f"pipeline step {number} ('{step.model}') reads {missing}, which no pipeline "
                "input or earlier step provides"
            )
        for tensor in step.outputs.values():
            if tensor in available:
                raise ValueError(
                    f"pipeline step {number} ('{step.model}') writes '{tensor}', which already "
                    "exists; every tensor has one producer"
                )
            available.add(tensor)
    unproduced = sorted({tensor.name for tensor in config.outputs} - available)
    if unproduced:
        raise ValueError(f"pipeline outputs {unproduced} are not written by any step")


def config_from_mapping(raw: object, name: str, source: str = "the config") -> ModelConfig:
    """A model config from the mapping a config file holds; ValueError names the problem.

    Reading the file's text (YAML, JSON, config.pbtxt) is the repository's job
    (repository/config_file.py): the core sees mappings only."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{source} must be a mapping, not {type(raw).__name__}")
    raw = {**raw}
    raw.setdefault("name", name)
    if raw["name"] != name:
        raise ValueError(f"{source} names the model '{raw['name']}' but it is loaded as '{name}'")
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"invalid {source}: {_summarize(exc)}") from None


def _summarize(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(item) for item in error["loc"]) or "(top level)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
