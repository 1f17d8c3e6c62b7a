"""Tabular runtimes: scikit-learn (joblib/pickle), XGBoost (json/ubj) and LightGBM (txt).

All three take one feature matrix and answer `predict` (class or value) and, for classifiers,
`predict_proba`. The input defaults to `input`, shaped [-1, n_features] in the framework's own
float type; config.yaml may name it differently, choose another datatype (it is cast), or split the
columns into several inputs (joined left to right). A scikit-learn pipeline that starts with a
text vectorizer takes one BYTES input of shape [-1].
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from modelport.core.config import ModelConfig
from modelport.core.errors import ConfigError, InvalidInput, ModelLoadError
from modelport.core.runtime import Capabilities, Signature
from modelport.core.types import DataType, TensorSpec
from modelport.runtimes.common import (
    configured,
    find_model_file,
    require_model_file,
    to_bytes,
    to_str,
)

PREDICT = "predict"
PROBA = "predict_proba"
DEFAULT_INPUT = "input"


def _inputs(
    config: ModelConfig, features: int | None, datatype: DataType
) -> tuple[TensorSpec, ...]:
    own = configured(config).inputs
    if own:
        return own
    if features is None:
        raise ConfigError(
            "the model does not record how many features it takes: list its input in config.yaml"
        )
    return (TensorSpec(DEFAULT_INPUT, datatype, (-1, features)),)


class TabularModel:
    """Joins the inputs into one matrix, runs the framework, returns the outputs asked for."""

    def __init__(self, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
        self._inputs = inputs
        self._outputs = outputs
        self._text = len(inputs) == 1 and inputs[0].datatype is DataType.BYTES

    def signature(self) -> Signature:
        return Signature(self._inputs, self._outputs)

    def features(self, inputs: dict[str, np.ndarray], dtype: type) -> np.ndarray:
        if self._text:
            name = self._inputs[0].name
            return to_str(name, inputs[name]).reshape(-1)
        columns = []
        for spec in self._inputs:
            array = inputs[spec.name]
            if array.dtype == object:
                raise InvalidInput(f"input '{spec.name}' must be numeric for this model")
            columns.append(array.reshape(array.shape[0], -1))
        matrix = columns[0] if len(columns) == 1 else np.hstack(columns)
        return matrix.astype(dtype, copy=False)

    def infer(
        self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] | None
    ) -> dict[str, np.ndarray]:
        wanted = outputs or tuple(spec.name for spec in self._outputs)
        return self.predict(inputs, wanted)

    def predict(self, inputs: dict[str, np.ndarray], wanted: tuple[str, ...]) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass


# ---- scikit-learn ---------------------------------------------------------------------------


class SklearnRuntime:
    platform = "sklearn"
    triton_platform = "sklearn"
    # predict() is read-only, but much of it is Python holding the GIL: worker processes.
    capabilities = Capabilities(thread_safe=True, releases_gil=False)
    filenames = ("model.joblib", "model.pkl")

    def find_model_file(self, version_dir: Path, config: ModelConfig) -> Path | None:
        return find_model_file(version_dir, config, self.filenames)

    def load(self, version_dir: Path, config: ModelConfig) -> SklearnModel:
        path = require_model_file(version_dir, config, self.filenames)
        if not config.trust:
            raise ConfigError(
                f"{path.name} is a pickle, and loading a pickle runs whatever code it holds. "
                "modelport loads it only when the model's config.yaml says `trust: true` "
                "(add `sha256: <digest>` to pin the exact file). Trust only files you made."
            )
        import joblib

        try:
            estimator = joblib.load(path)
        except Exception as exc:
            raise ModelLoadError(f"could not unpickle {path.name}: {exc}") from None
        if not hasattr(estimator, "predict"):
            raise ModelLoadError(
                f"{path.name} holds a {type(estimator).__name__}, which has no predict()"
            )
        return SklearnModel(estimator, config)


class SklearnModel(TabularModel):
    def __init__(self, estimator: Any, config: ModelConfig) -> None:
        self._estimator = estimator
        inputs = _inputs(config, getattr(estimator, "n_features_in_", None), DataType.FP64)
        classes = getattr(estimator, "classes_", None)
        if classes is not None:
            labels = DataType.BYTES if np.asarray(classes).dtype.kind in "OUS" else DataType.INT64
            outputs = [TensorSpec(PREDICT, labels, (-1,))]
            if hasattr(estimator, PROBA):
                outputs.append(TensorSpec(PROBA, DataType.FP64, (-1, len(classes))))
        else:
            targets = getattr(estimator, "n_outputs_", 1)
            shape = (-1,) if targets == 1 else (-1, targets)
            outputs = [TensorSpec(PREDICT, DataType.FP64, shape)]
        super().__init__(inputs, tuple(outputs))

    def predict(self, inputs: dict[str, np.ndarray], wanted: tuple[str, ...]) -> dict[str, Any]:
        features = self.features(inputs, np.float64)
        results: dict[str, np.ndarray] = {}
        if PREDICT in wanted:
            predicted = np.asarray(self._estimator.predict(features))
            if predicted.dtype.kind in "OUS":
                results[PREDICT] = to_bytes(predicted)
            elif predicted.dtype.kind in "iub":
                results[PREDICT] = predicted.astype(np.int64)
            else:
                results[PREDICT] = predicted.astype(np.float64)
        if PROBA in wanted:
            results[PROBA] = np.asarray(self._estimator.predict_proba(features), np.float64)
        return results


# ---- XGBoost --------------------------------------------------------------------------------


class XGBoostRuntime:
    platform = "xgboost"
    triton_platform = "xgboost"
    capabilities = Capabilities(thread_safe=True, releases_gil=True)
    filenames = ("model.json", "model.ubj")

    def find_model_file(self, version_dir: Path, config: ModelConfig) -> Path | None:
        return find_model_file(version_dir, config, self.filenames)

    def load(self, version_dir: Path, config: ModelConfig) -> XGBoostModel:
        import xgboost

        path = require_model_file(version_dir, config, self.filenames)
        booster = xgboost.Booster()
        try:
            booster.load_model(str(path))
        except xgboost.core.XGBoostError as exc:
            detail = str(exc).strip().splitlines()[0][:300]
            raise ModelLoadError(f"xgboost could not load {path.name}: {detail}") from None
        if config.runtime.intra_op_threads:
            booster.set_param({"nthread": config.runtime.intra_op_threads})
        return XGBoostModel(booster, config)


class XGBoostModel(TabularModel):
    def __init__(self, booster: Any, config: ModelConfig) -> None:
        self._booster = booster
        learner = json.loads(booster.save_config())["learner"]
        self._objective = learner["objective"]["name"]
        classes = int(learner["learner_model_param"].get("num_class", "0")) or 2
        inputs = _inputs(config, booster.num_features(), DataType.FP32)
        if self._objective in ("binary:logistic", "multi:softprob"):
            outputs: tuple[TensorSpec, ...] = (
                TensorSpec(PREDICT, DataType.INT64, (-1,)),
                TensorSpec(PROBA, DataType.FP32, (-1, classes)),
            )
        elif self._objective in ("multi:softmax", "binary:hinge"):
            outputs = (TensorSpec(PREDICT, DataType.INT64, (-1,)),)
        else:
            targets = int(learner["learner_model_param"].get("num_target", "1"))
            shape = (-1,) if targets == 1 else (-1, targets)
            outputs = (TensorSpec(PREDICT, DataType.FP32, shape),)
        super().__init__(inputs, outputs)

    def predict(self, inputs: dict[str, np.ndarray], wanted: tuple[str, ...]) -> dict[str, Any]:
        raw = np.asarray(self._booster.inplace_predict(self.features(inputs, np.float32)))
        if self._objective == "binary:logistic":
            proba = np.stack([1 - raw, raw], axis=1)
            labels = (raw > 0.5).astype(np.int64)
        elif self._objective == "multi:softprob":
            proba, labels = raw, raw.argmax(axis=1).astype(np.int64)
        elif self._objective in ("multi:softmax", "binary:hinge"):
            return {PREDICT: raw.astype(np.int64)}
        else:
            return {PREDICT: raw.astype(np.float32)}
        results = {PREDICT: labels, PROBA: proba.astype(np.float32)}
        return {name: results[name] for name in wanted}


# ---- LightGBM -------------------------------------------------------------------------------


class LightGBMRuntime:
    platform = "lightgbm"
    triton_platform = "lightgbm"
    # Concurrent predict() calls on one Booster are not documented as safe: a copy per instance.
    capabilities = Capabilities(thread_safe=False, releases_gil=True)
    filenames = ("model.txt",)

    def find_model_file(self, version_dir: Path, config: ModelConfig) -> Path | None:
        return find_model_file(version_dir, config, self.filenames)

    def load(self, version_dir: Path, config: ModelConfig) -> LightGBMModel:
        import lightgbm

        path = require_model_file(version_dir, config, self.filenames)
        try:
            booster = lightgbm.Booster(model_file=str(path))
        except lightgbm.basic.LightGBMError as exc:
            raise ModelLoadError(f"lightgbm could not load {path.name}: {exc}") from None
        return LightGBMModel(booster, _header(path), config)


def _header(path: Path) -> dict[str, str]:
    """The key=value lines before the first tree of a LightGBM text model."""
    fields = {}
    with path.open(encoding="utf-8", errors="replace") as stream:
        for line in stream:
            if line.startswith("Tree="):
                break
            key, sep, value = line.strip().partition("=")
            if sep:
                fields[key] = value
    return fields


class LightGBMModel(TabularModel):
    def __init__(self, booster: Any, header: dict[str, str], config: ModelConfig) -> None:
        self._booster = booster
        self._threads = config.runtime.intra_op_threads or 0
        objective = header.get("objective", "regression").split()[0]
        self._kind = {"binary": "binary", "multiclass": "multi", "multiclassova": "multi"}.get(
            objective, "regression"
        )
        classes = int(header.get("num_class", "1")) if self._kind == "multi" else 2
        inputs = _inputs(config, booster.num_feature(), DataType.FP64)
        if self._kind == "regression":
            outputs: tuple[TensorSpec, ...] = (TensorSpec(PREDICT, DataType.FP64, (-1,)),)
        else:
            outputs = (
                TensorSpec(PREDICT, DataType.INT64, (-1,)),
                TensorSpec(PROBA, DataType.FP64, (-1, classes)),
            )
        super().__init__(inputs, outputs)

    def predict(self, inputs: dict[str, np.ndarray], wanted: tuple[str, ...]) -> dict[str, Any]:
        options = {"num_threads": self._threads} if self._threads else {}
        raw = np.asarray(self._booster.predict(self.features(inputs, np.float64), **options))
        if self._kind == "regression":
            return {PREDICT: raw.astype(np.float64)}
        proba = np.stack([1 - raw, raw], axis=1) if self._kind == "binary" else raw
        results = {PREDICT: proba.argmax(axis=1).astype(np.int64), PROBA: proba}
        return {name: results[name] for name in wanted}
