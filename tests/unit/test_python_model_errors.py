"""What a model.py's failures look like, in a thread and across the worker-process boundary:
load failures name the file and line, InvalidInput keeps its kind, and an exception whose class
only the worker has comes back as a WorkerException without breaking the pool."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from modelport.core.config import ModelConfig
from modelport.core.errors import ErrorKind, InvalidInput, ModelLoadError
from modelport.core.runtime import ModelHost
from modelport.runtimes.executor import WorkerException
from modelport.runtimes.registry import RuntimeRegistry

TENSORS = {
    "inputs": [{"name": "X", "datatype": "INT64", "shape": [-1]}],
    "outputs": [{"name": "Y", "datatype": "INT64", "shape": [-1]}],
}
EXECUTORS = ["thread", "process"]


def config(executor: str, name: str) -> ModelConfig:
    return ModelConfig.model_validate({**TENSORS, "name": name, "runtime": {"executor": executor}})


def version(tmp_path: Path, files: dict[str, str]) -> Path:
    directory = tmp_path / "m" / "1"
    directory.mkdir(parents=True)
    for name, code in files.items():
        (directory / name).write_text(textwrap.dedent(code).lstrip())
    return directory


def host(directory: Path, executor: str, name: str = "m") -> ModelHost:
    """The version loaded as model `name`; a model.py that runs in this process (a thread)
    stays imported here as modelport_user_<name>_v1."""
    registry = RuntimeRegistry()
    runtime = registry.runtime_for(directory, config(executor, name))
    return registry.host(runtime, directory, config(executor, name), f"{name}-1")


GOOD_CLASS = """
class Model:
    def predict(self, inputs):
        return {"Y": inputs["X"]}
"""

# (case, files of the version, the whole reason)
LOAD_FAILURES = [
    (
        "syntax",
        {"model.py": "import os\n\ndef broken(:\n    pass\n"},
        "model.py, line 3: SyntaxError: invalid syntax",
    ),
    (
        "import",
        {"model.py": GOOD_CLASS + "\nscale = undefined_name\n"},
        "model.py, line 5: NameError: name 'undefined_name' is not defined",
    ),
    (
        "load hook",
        {
            "model.py": """
            class Model:
                def load(self, context):
                    self.weights = context.parameters["weights"]

                def predict(self, inputs):
                    return {"Y": inputs["X"]}
            """
        },
        "model.py, line 3, in load: KeyError: 'weights'",
    ),
    (
        "helper beside model.py",
        {
            "model.py": "from {helper} import SCALE\n" + GOOD_CLASS,
            "{helper}.py": "OFFSET = 1\nSCALE = OFFSET / 0\n",
        },
        "{helper}.py, line 2: ZeroDivisionError: division by zero",
    ),
]


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize(
    ("files", "reason"), [c[1:] for c in LOAD_FAILURES], ids=[c[0] for c in LOAD_FAILURES]
)
def test_a_load_failure_names_the_file_and_line(
    tmp_path: Path, executor: str, files: dict[str, str], reason: str
) -> None:
    helper = f"helper_{executor}"  # one module name per test: a thread imports it here

    def named(text: str) -> str:
        return text.replace("{helper}", helper)

    files = {named(name): named(code) for name, code in files.items()}
    with pytest.raises(ModelLoadError) as failed:
        host(version(tmp_path, files), executor)
    assert failed.value.message == named(reason)


RAISING = """
import numpy as np

from modelport.core.errors import InvalidInput


class Refused(Exception):
    pass


class NegativeInput(InvalidInput):
    pass


class Model:
    def predict(self, inputs):
        x = inputs["X"]
        if x[0] == 1:
            raise InvalidInput("X must not start with 1")
        if x[0] == 2:
            raise NegativeInput("X must not start with 2")
        if x[0] == 3:
            raise Refused("X must not start with 3")
        if x[0] == 4:
            raise ValueError("X must not start with 4")
        return {"Y": x * 10}
"""


def run(model: ModelHost, first: int) -> dict[str, np.ndarray]:
    outputs, _ = asyncio.run(model.run({"X": np.array([first, 7], np.int64)}, None))
    return outputs


@pytest.mark.parametrize("executor", EXECUTORS)
def test_invalid_input_keeps_its_kind_and_message(tmp_path: Path, executor: str) -> None:
    model = host(version(tmp_path, {"model.py": RAISING}), executor, f"raising_{executor}")
    try:
        for first in (1, 2):
            with pytest.raises(InvalidInput) as refused:
                run(model, first)
            assert refused.value.kind is ErrorKind.INVALID_INPUT
            assert refused.value.message == f"X must not start with {first}"
        with pytest.raises(ValueError, match="X must not start with 4"):
            run(model, 4)
        np.testing.assert_array_equal(run(model, 0)["Y"], [0, 70])
    finally:
        model.close()


def test_an_exception_only_the_worker_can_import_leaves_the_pool_alone(tmp_path: Path) -> None:
    model = host(version(tmp_path, {"model.py": RAISING}), "process", "pool")
    assert "modelport_user_pool_v1" not in sys.modules  # only the worker can import Refused
    try:
        pool = model._pool  # type: ignore[attr-defined]  # the worker pool of a ProcessHost
        with pytest.raises(WorkerException, match=r"^X must not start with 3$") as caught:
            run(model, 3)
        assert caught.value.original_type == "Refused"
        np.testing.assert_array_equal(run(model, 0)["Y"], [0, 70])
        assert model._pool is pool  # type: ignore[attr-defined]  # not replaced
    finally:
        model.close()


def test_a_worker_exception_reads_as_the_same_exception_in_a_thread_would() -> None:
    from modelport.core.batcher import _as_error

    class Refused(Exception):
        pass

    in_thread = _as_error("model 'm' version 1", Refused("X must not start with 3"))
    from_worker = _as_error(
        "model 'm' version 1", WorkerException("Refused", "X must not start with 3")
    )
    assert in_thread.message == from_worker.message
    assert from_worker.message == "model 'm' version 1 failed: Refused: X must not start with 3"
