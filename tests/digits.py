"""Digits data (shipped inside scikit-learn) and small torch models the optimization tests
train themselves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.optimize import Dataset


@dataclass(frozen=True)
class Digits:
    train: Dataset
    val: Dataset
    calibration: Dataset


def digits() -> Digits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=0.3, random_state=0, stratify=y
    )
    return Digits(Dataset.of(x_train, y_train), Dataset.of(x_val, y_val), Dataset.of(x_train[:128]))


def mlp(hidden: int = 256) -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    )


def train(module: Any, data: Dataset, epochs: int = 15) -> Any:
    import torch

    torch.manual_seed(0)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.labels())
    optimizer = torch.optim.Adam(module.parameters(), lr=2e-3)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            rows = order[start : start + 64]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(module(x[rows]), y[rows]).backward()
            optimizer.step()
    return module.eval()


def onnx_accuracy(path: Path, data: Dataset, output: int = 0) -> float:
    """Accuracy computed here with onnxruntime, independently of the toolkit's measurement."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: data.x.astype(np.float32)}
    scores = session.run(None, feed)[output]
    predicted = scores.argmax(axis=1) if scores.ndim == 2 else scores
    return float(np.mean(predicted == data.labels()))


def describe(path: Path) -> dict[str, dict[str, int]]:
    """Op counts and initializer element counts by dtype of an ONNX model."""
    import onnx

    model = onnx.load(str(path))
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    dtypes: dict[str, int] = {}
    for init in model.graph.initializer:
        name = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
        dtypes[name] = dtypes.get(name, 0) + int(np.prod(init.dims))
    return {"ops": ops, "initializer_elements": dtypes}
