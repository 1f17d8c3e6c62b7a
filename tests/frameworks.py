"""Small framework models the runtime tests train and save themselves (nothing is downloaded)."""

from __future__ import annotations

import hashlib
import textwrap
import warnings
from pathlib import Path

import numpy as np

TOKENS = 8
LABELS = ("negative", "neutral", "positive")


def version_dir(repo: Path, name: str, version: int = 1, config: str = "") -> Path:
    directory = repo / name / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    if config:
        (repo / name / "config.yaml").write_text(textwrap.dedent(config))
    return directory


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- torch ----------------------------------------------------------------------------------


def torch_mlp(seed: int = 0):  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(seed)

    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
            )

        def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.body(features)
            return logits, logits.argmax(dim=1)

    return TwoHeads().eval()


def save_torchscript(module: object, path: Path) -> None:
    """TorchScript is deprecated in torch 2.13 but still what many model files are."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(path))


def save_exported(module: object, path: Path) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    example = (torch.zeros(2, 16),)
    program = torch.export.export(module, example, dynamic_shapes={"features": {0: batch}})
    torch.export.save(program, str(path))


# ---- tabular --------------------------------------------------------------------------------


def iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    data = load_iris()
    return data.data.astype(np.float64), data.target


def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return data.data.astype(np.float64), data.target


def sklearn_species_classifier():  # type: ignore[no-untyped-def]
    """A scikit-learn pipeline whose classes are strings (so `predict` is BYTES)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = iris()
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, names)


def sklearn_regressor():  # type: ignore[no-untyped-def]
    from sklearn.ensemble import RandomForestRegressor

    x, y = breast_cancer()
    return RandomForestRegressor(n_estimators=10, max_depth=4, random_state=0).fit(x, x[:, 0] * y)


def xgboost_classifier():  # type: ignore[no-untyped-def]
    import xgboost

    x, y = breast_cancer()
    return xgboost.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1).fit(x, y)


def xgboost_multiclass():  # type: ignore[no-untyped-def]
    import xgboost

    x, y = iris()
    return xgboost.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1).fit(x, y)


def lightgbm_multiclass():  # type: ignore[no-untyped-def]
    import lightgbm

    x, y = iris()
    return lightgbm.LGBMClassifier(n_estimators=20, num_leaves=8, verbose=-1, n_jobs=1).fit(x, y)


def lightgbm_regressor():  # type: ignore[no-untyped-def]
    import lightgbm

    x, y = breast_cancer()
    return lightgbm.LGBMRegressor(n_estimators=20, num_leaves=8, verbose=-1, n_jobs=1).fit(
        x, x[:, 1] + y
    )


# ---- python models and a pipeline ------------------------------------------------------------

TOKENIZER = """
import os
import zlib

import numpy as np

WIDTH = 8


class Model:
    def load(self, context):
        self.lowercase = context.parameters.get("lowercase", True)

    def preprocess(self, inputs):
        texts = [t.decode("utf-8") for t in inputs["TEXT"]]
        return [t.lower() if self.lowercase else t for t in texts]

    def predict(self, texts):
        features = np.zeros((len(texts), WIDTH), np.float32)
        for row, text in enumerate(texts):
            for word in text.split():
                features[row, zlib.crc32(word.encode()) % WIDTH] += 1.0
        return features

    def postprocess(self, features):
        return {"FEATURES": features, "PID": np.full(len(features), os.getpid())}
"""

LABELLER = '''
import numpy as np


class Labeller:
    """Not named Model: found as the only class with predict()."""

    def load(self):
        self.names = ["negative", "neutral", "positive"]

    def predict(self, inputs):
        logits = inputs["LOGITS"]
        best = logits.argmax(axis=1)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        score = (shifted / shifted.sum(axis=1, keepdims=True)).max(axis=1)
        return {"LABEL": [self.names[i] for i in best], "SCORE": score}
'''

CRASHER = """
import os


class Model:
    def predict(self, inputs):
        if inputs["X"].sum() < 0:
            os._exit(3)  # a model that takes its process down
        return {"Y": inputs["X"] * 2}
"""


def tokenize(texts: list[str]) -> np.ndarray:
    """What TOKENIZER computes, for reference."""
    import zlib

    features = np.zeros((len(texts), TOKENS), np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().split():
            features[row, zlib.crc32(word.encode()) % TOKENS] += 1.0
    return features
