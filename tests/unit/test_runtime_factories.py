"""A registry's own runtime factories reach its worker processes; one that cannot is refused at
load time, naming why. Nothing here starts a server, but ProcessHost does spawn workers."""

from __future__ import annotations

import ast
import asyncio
import os
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

import modelport.runtimes.executor as executor
from modelport.core.config import ModelConfig, RuntimeOptions
from modelport.core.errors import ConfigError, ModelLoadError
from modelport.core.runtime import ModelHost, Runtime
from modelport.runtimes.factories import FactoryRef, create, for_worker
from modelport.runtimes.registry import BUILTIN, ENTRY_POINT_GROUP, RuntimeRegistry, _reference
from tests.unit.custom_runtime import DoublingRuntime, ThreadedDoublingRuntime, make_doubling

CONFIG = ModelConfig(platform="doubling")


def hosted(factory: FactoryRef, directory: Path, config: ModelConfig = CONFIG) -> ModelHost:
    registry = RuntimeRegistry({"doubling": factory})
    runtime = registry.runtime_for(directory, config)
    return registry.host(runtime, directory, config, "doubling-1")


def doubled(host: ModelHost) -> dict[str, np.ndarray]:
    outputs, _ = asyncio.run(host.run({"X": np.array([1.0, 2.5], np.float32)}, None))
    np.testing.assert_array_equal(outputs["Y"], [2.0, 5.0])
    return outputs


@pytest.mark.parametrize(
    "factory",
    [DoublingRuntime, make_doubling, "tests.unit.custom_runtime:DoublingRuntime"],
    ids=["class", "function", "reference"],
)
def test_a_custom_runtime_loads_and_infers_in_a_worker_process(
    factory: FactoryRef, tmp_path: Path
) -> None:
    host = hosted(factory, tmp_path)
    try:
        assert host.kind == "process"
        assert doubled(host)["PID"][0] != os.getpid()
    finally:
        host.close()


def _local_factory() -> FactoryRef:
    def factory() -> Runtime:
        return DoublingRuntime()

    return factory


@pytest.mark.parametrize(
    ("factory", "shown"),
    [(lambda: DoublingRuntime(), "<lambda>"), (_local_factory(), "_local_factory.<locals>")],
    ids=["lambda", "closure"],
)
def test_a_factory_a_worker_cannot_receive_is_refused_at_load(
    factory: FactoryRef, shown: str, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match="cannot be sent to a worker process") as refused:
        hosted(factory, tmp_path)
    assert "platform 'doubling'" in refused.value.message
    assert shown in refused.value.message
    assert "executor: thread" in refused.value.message  # the way out
    threaded = ModelConfig(platform="doubling", runtime=RuntimeOptions(executor="thread"))
    host = hosted(factory, tmp_path, threaded)  # a thread needs nothing sent
    try:
        assert host.kind == "thread"
        assert doubled(host)["PID"][0] == os.getpid()
    finally:
        host.close()


def test_the_executor_override_still_decides(tmp_path: Path) -> None:
    process = ModelConfig(platform="doubling", runtime=RuntimeOptions(executor="process"))
    host = hosted(ThreadedDoublingRuntime, tmp_path, process)
    try:
        assert host.kind == "process"
        doubled(host)
    finally:
        host.close()
    host = hosted(ThreadedDoublingRuntime, tmp_path)
    try:
        assert host.kind == "thread"
    finally:
        host.close()


def test_a_reference_names_module_and_qualname() -> None:
    assert isinstance(create("tests.unit.custom_runtime:DoublingRuntime"), DoublingRuntime)
    with pytest.raises(ConfigError, match="not of the form 'module:qualname'"):
        create("tests.unit.custom_runtime.DoublingRuntime")
    with pytest.raises(ConfigError, match="custom_runtime has no Missing"):
        create("tests.unit.custom_runtime:Missing")
    with pytest.raises(ConfigError, match="is a Signature, not callable"):
        create("tests.unit.custom_runtime:SIGNATURE")


def test_built_in_and_entry_point_factories_are_references() -> None:
    for platform, factory in BUILTIN.items():
        assert isinstance(factory, str), platform  # names its module without importing it
        for_worker(factory, platform)
    point = EntryPoint("mine", "tests.unit.custom_runtime:DoublingRuntime [gpu]", ENTRY_POINT_GROUP)
    assert isinstance(create(_reference(point)), DoublingRuntime)


def test_the_executor_does_not_import_the_registry() -> None:
    tree = ast.parse(Path(executor.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert "modelport.runtimes.registry" not in imported
