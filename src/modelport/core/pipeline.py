"""Pipelines (Triton's ensembles): one request that runs several models, outputs feeding inputs.

A pipeline is only a plan. Each step is an ordinary request to another model in the repository,
so it goes through that model's validation, batching and metrics: concurrent pipeline requests
are batched step by step. Steps whose inputs are all available run at the same time.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable

import numpy as np

from modelport.core.config import ModelConfig, PipelineStep
from modelport.core.errors import InvalidInput, ModelportError
from modelport.core.types import InferRequest, InferResponse

Arrays = dict[str, np.ndarray]
CallModel = Callable[[InferRequest], Awaitable[InferResponse]]

MAX_DEPTH = 8
"""Pipelines may call pipelines; deeper than this is taken for a cycle."""

_depth: contextvars.ContextVar[int] = contextvars.ContextVar("pipeline_depth", default=0)


Step = tuple[int, PipelineStep, tuple[str, ...]]
"""A step's number (from 1), the step, and the outputs it asks its model for."""


class Pipeline:
    def __init__(self, name: str, config: ModelConfig) -> None:
        self.name = name
        self.steps = config.pipeline
        self.outputs = tuple(tensor.name for tensor in config.outputs)
        self._waves: dict[frozenset[str], list[list[Step]]] = {}
        """Per set of wanted outputs (the guard allows only declared ones, so it stays small)."""

    def plan(self, wanted: tuple[str, ...] | None) -> list[tuple[int, PipelineStep]]:
        """The steps needed for the wanted outputs, in order (numbered from 1)."""
        needed = set(wanted or self.outputs)
        chosen = []
        for number, step in reversed(list(enumerate(self.steps, 1))):
            if needed & set(step.outputs.values()):
                chosen.append((number, step))
                needed.update(step.inputs.values())
        return chosen[::-1]

    def waves(self, wanted: tuple[str, ...] | None) -> list[list[Step]]:
        """The plan grouped into rounds: a step runs in the round after the last one that
        writes a tensor it reads. Computed once per set of wanted outputs."""
        key = frozenset(wanted or self.outputs)
        cached = self._waves.get(key)
        if cached is not None:
            return cached
        round_of: dict[str, int] = {}  # tensor -> round that writes it (absent: an input)
        waves: list[list[Step]] = []
        for number, step in self.plan(tuple(key)):
            level = max((round_of.get(t, -1) for t in step.inputs.values()), default=-1) + 1
            if level == len(waves):
                waves.append([])
            waves[level].append((number, step, tuple(step.outputs)))
            round_of.update(dict.fromkeys(step.outputs.values(), level))
        self._waves[key] = waves
        return waves

    async def run(
        self, inputs: Arrays, wanted: tuple[str, ...] | None, call: CallModel, timeout: float | None
    ) -> Arrays:
        depth = _depth.get() + 1
        if depth > MAX_DEPTH:
            raise InvalidInput(
                f"pipeline '{self.name}' is nested more than {MAX_DEPTH} deep; do its steps call "
                "it back?"
            )
        token = _depth.set(depth)
        try:
            tensors = dict(inputs)
            for wave in self.waves(wanted):
                produced = await asyncio.gather(
                    *(self._step(step, tensors, call, timeout) for step in wave)
                )
                for outputs in produced:
                    tensors.update(outputs)
        finally:
            _depth.reset(token)
        return {name: tensors[name] for name in wanted or self.outputs}

    async def _step(
        self, planned: Step, tensors: Arrays, call: CallModel, timeout: float | None
    ) -> Arrays:
        number, step, outputs = planned
        request = InferRequest(
            model_name=step.model,
            inputs={name: tensors[source] for name, source in step.inputs.items()},
            model_version=step.version,
            outputs=outputs,
            timeout=timeout,
        )
        try:
            response = await call(request)
        except ModelportError as exc:
            where = f"pipeline '{self.name}' step {number} ('{step.model}')"
            raise _restated(exc, f"{where}: {exc.message}") from exc
        return {step.outputs[name]: array for name, array in response.outputs.items()}


def _restated(exc: ModelportError, message: str) -> ModelportError:
    """The same error (kind and fields, e.g. a rate limit's retry_after) with another message."""
    error = type(exc).__new__(type(exc), message)  # no __init__: subclasses take other arguments
    error.__dict__.update(vars(exc))
    error.message = message
    return error
