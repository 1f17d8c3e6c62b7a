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


class Pipeline:
    def __init__(self, name: str, config: ModelConfig) -> None:
        self.name = name
        self.steps = config.pipeline
        self.outputs = tuple(tensor.name for tensor in config.outputs)

    def plan(self, wanted: tuple[str, ...] | None) -> list[tuple[int, PipelineStep]]:
        """The steps needed for the wanted outputs, in order (numbered from 1)."""
        needed = set(wanted or self.outputs)
        chosen = []
        for number, step in reversed(list(enumerate(self.steps, 1))):
            if needed & set(step.outputs.values()):
                chosen.append((number, step))
                needed.update(step.inputs.values())
        return chosen[::-1]

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
            remaining = self.plan(wanted)
            while remaining:
                ready = [
                    (number, step)
                    for number, step in remaining
                    if all(source in tensors for source in step.inputs.values())
                ]
                produced = await asyncio.gather(
                    *(self._step(number, step, tensors, call, timeout) for number, step in ready)
                )
                for outputs in produced:
                    tensors.update(outputs)
                remaining = [item for item in remaining if item not in ready]
        finally:
            _depth.reset(token)
        return {name: tensors[name] for name in wanted or self.outputs}

    async def _step(
        self,
        number: int,
        step: PipelineStep,
        tensors: Arrays,
        call: CallModel,
        timeout: float | None,
    ) -> Arrays:
        request = InferRequest(
            model_name=step.model,
            inputs={name: tensors[source] for name, source in step.inputs.items()},
            model_version=step.version,
            outputs=tuple(step.outputs),
            timeout=timeout,
        )
        try:
            response = await call(request)
        except ModelportError as exc:
            where = f"pipeline '{self.name}' step {number} ('{step.model}')"
            raise type(exc)(f"{where}: {exc.message}") from exc
        return {step.outputs[name]: array for name, array in response.outputs.items()}
