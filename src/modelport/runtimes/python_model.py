"""Python models: a `model.py` whose class loads anything and runs any code.

    class Model:
        def load(self, context): ...              # optional argument: a ModelContext
        def preprocess(self, inputs): ...         # optional: dict of arrays -> anything
        def predict(self, data): ...              # required
        def postprocess(self, prediction): ...    # optional: -> dict of output name -> array

The class is the one named `Model`, or else the only class in the file with a `predict` method.
Inputs arrive batched along the first dimension; BYTES tensors are object arrays of `bytes`, and
outputs may be returned as bytes, str or numpy strings. Inputs and outputs come from config.yaml.
Such code usually holds the GIL, so by default each instance is a worker process.

To refuse a request, the code raises modelport.core.errors.InvalidInput (400, its message);
executor.py keeps that kind across the worker boundary. Anything else it raises is a 500.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelport.core.config import ModelConfig
from modelport.core.errors import InferenceFailed, ModelLoadError
from modelport.core.runtime import Capabilities, Signature
from modelport.core.types import DataType
from modelport.runtimes.common import (
    find_model_file,
    require_configured,
    require_model_file,
    to_bytes,
)

FILENAME = "model.py"
CLASS_NAME = "Model"


@dataclass(frozen=True, slots=True)
class ModelContext:
    """What a Python model's load() may want to know."""

    name: str
    version: str
    version_dir: Path
    """The version's directory: weights, vocabularies and other files live here."""
    parameters: dict[str, Any] = field(default_factory=dict)
    """`parameters` from config.yaml."""


class PythonRuntime:
    platform = "python"
    triton_platform = "python"
    capabilities = Capabilities(thread_safe=False, releases_gil=False)

    def find_model_file(self, version_dir: Path, config: ModelConfig) -> Path | None:
        return find_model_file(version_dir, config, (FILENAME,))

    def load(self, version_dir: Path, config: ModelConfig) -> PythonModel:
        path = require_model_file(version_dir, config, (FILENAME,))
        signature = require_configured(config, "a Python model's tensors are not in its code")
        cls = _model_class(path, config.name or "model", version_dir.name)
        try:
            instance = cls()
            load = getattr(instance, "load", None)
            if load is not None:
                context = ModelContext(
                    config.name or "", version_dir.name, version_dir, dict(config.parameters)
                )
                load(context) if inspect.signature(load).parameters else load()
        except Exception as exc:
            raise ModelLoadError(_located(exc, path)) from None
        return PythonModel(instance, signature)


def _model_class(path: Path, name: str, version: str) -> type:
    module_name = re.sub(r"\W", "_", f"modelport_user_{name}_v{version}")
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look classes up there
    sys.path.insert(0, str(path.parent))  # so model.py can import files beside it
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(_located(exc, path)) from None
    finally:
        sys.path.remove(str(path.parent))
    named = getattr(module, CLASS_NAME, None)
    if isinstance(named, type):
        return named
    candidates = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and value.__module__ == module_name and hasattr(value, "predict")
    ]
    if len(candidates) != 1:
        found = ", ".join(c.__name__ for c in candidates) or "none"
        raise ModelLoadError(
            f"{path.name} must define a class named {CLASS_NAME}, or exactly one class with a "
            f"predict() method (found: {found})"
        )
    return candidates[0]


def _located(exc: Exception, path: Path) -> str:
    """One line for a load failure, where the model's own code raised it:
    "model.py, line 12, in load: NameError: name 'x' is not defined". The traceback would be
    mostly modelport's and the framework's frames; the reason keeps the user's innermost one."""
    kind = type(exc).__name__
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:  # the file did not compile
        return f"{_shown(Path(exc.filename), path)}, line {exc.lineno}: {kind}: {exc.msg}"
    what = f"{kind}: {exc}" if str(exc) else kind
    frames = traceback.extract_tb(exc.__traceback__)
    own = [frame for frame in frames if Path(frame.filename).is_relative_to(path.parent)]
    if not own:
        return f"{path.name}: {what}"
    frame = own[-1]
    where = "" if frame.name == "<module>" else f", in {frame.name}"
    return f"{_shown(Path(frame.filename), path)}, line {frame.lineno}{where}: {what}"


def _shown(filename: Path, path: Path) -> str:
    """A file of the version by its path in the version directory (model.py, lib/util.py)."""
    return (
        str(filename.relative_to(path.parent))
        if filename.is_relative_to(path.parent)
        else str(filename)
    )


class PythonModel:
    def __init__(self, instance: Any, signature: Signature) -> None:
        self._instance = instance
        self._signature = signature
        self._preprocess = getattr(instance, "preprocess", None)
        self._postprocess = getattr(instance, "postprocess", None)
        self._specs = {spec.name: spec for spec in signature.outputs}

    def signature(self) -> Signature:
        return self._signature

    def infer(
        self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None
    ) -> dict[str, np.ndarray]:
        data: Any = self._preprocess(inputs) if self._preprocess else inputs
        prediction = self._instance.predict(data)
        result = self._postprocess(prediction) if self._postprocess else prediction
        if not isinstance(result, dict):
            raise InferenceFailed(
                f"the model returned a {type(result).__name__}; it must return a dict of output "
                "name -> array (from predict or postprocess)"
            )
        wanted = outputs or tuple(self._specs)
        missing = [name for name in wanted if name not in result]
        if missing:
            raise InferenceFailed(f"the model returned no {missing} (it returned {list(result)})")
        return {name: _as_tensor(result[name], self._specs[name].datatype) for name in wanted}

    def close(self) -> None:
        close = getattr(self._instance, "close", None)
        if close is not None:
            close()


def _as_tensor(value: Any, datatype: DataType) -> np.ndarray:
    if datatype is DataType.BYTES:
        return to_bytes(np.asarray(value, dtype=object))
    return np.asarray(value).astype(datatype.numpy_dtype, copy=False)
