"""scikit-learn, XGBoost and LightGBM to ONNX (skl2onnx, onnxmltools). The graph takes `input`
and answers `predict` (and `predict_proba` for classifiers), as the tabular runtimes serve the
originals; the expected outputs come from the framework itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from modelport.optimize.data import Dataset
from modelport.optimize.errors import OptimizeError
from modelport.optimize.onnx_names import OPSET, TREE_OPSET, rename_tensors

PREDICT, PROBA = "predict", "predict_proba"


def _features(sample: Dataset) -> np.ndarray:
    x = np.asarray(sample.x, dtype=np.float32)
    if x.ndim != 2:
        raise OptimizeError(f"tabular models take a 2-D feature matrix; the sample is {x.shape}")
    return x


def _tabular_reference(estimator: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    results = {PREDICT: np.asarray(estimator.predict(x))}
    if hasattr(estimator, "predict_proba"):
        results[PROBA] = np.asarray(estimator.predict_proba(x))
    return results


def from_pickle(source: Any, sample: Dataset, output: Path) -> dict[str, np.ndarray]:
    import joblib

    estimator = joblib.load(str(source))
    kind = type(estimator).__module__.split(".")[0]
    x = _features(sample)
    if kind == "xgboost":
        return _write_xgboost(estimator, x, output)
    if kind == "lightgbm":
        return _write_lightgbm(estimator.booster_, x, output)
    from skl2onnx import to_onnx

    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "predict_proba") else None
    model = to_onnx(estimator, x[:1], options=options, target_opset={"": OPSET, "ai.onnx.ml": 3})
    return _write_tabular(model, _tabular_reference(estimator, x), output)


def _write_tabular(
    model: onnx.ModelProto, expected: dict[str, np.ndarray], output: Path
) -> dict[str, np.ndarray]:
    onnx.save(model, str(output))
    rename_tensors(output, ["input"], list(expected)[: len(model.graph.output)])
    return expected


def from_xgboost(source: Any, sample: Dataset, output: Path) -> dict[str, np.ndarray]:
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(str(source))
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    estimator_class = (
        xgboost.XGBClassifier
        if objective.startswith(("binary:", "multi:"))
        else xgboost.XGBRegressor
    )
    estimator = estimator_class()
    estimator.load_model(str(source))
    return _write_xgboost(estimator, _features(sample), output)


def _write_xgboost(estimator: Any, x: np.ndarray, output: Path) -> dict[str, np.ndarray]:
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = convert_xgboost(
        estimator,
        initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
        target_opset=TREE_OPSET,
    )
    return _write_tabular(model, _tabular_reference(estimator, x), output)


def from_lightgbm(source: Any, sample: Dataset, output: Path) -> dict[str, np.ndarray]:
    import lightgbm

    return _write_lightgbm(lightgbm.Booster(model_file=str(source)), _features(sample), output)


def _write_lightgbm(booster: Any, x: np.ndarray, output: Path) -> dict[str, np.ndarray]:
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = convert_lightgbm(
        booster,
        initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
        target_opset=TREE_OPSET,
        zipmap=False,
    )
    raw = np.asarray(booster.predict(x))
    objective = booster.params.get("objective") or booster.dump_model()["objective"]
    if str(objective).startswith("binary"):
        proba = np.stack([1 - raw, raw], axis=1)
        expected = {PREDICT: proba.argmax(axis=1), PROBA: proba}
    elif str(objective).startswith("multiclass"):
        expected = {PREDICT: raw.argmax(axis=1), PROBA: raw}
    else:
        expected = {PREDICT: raw}
    return _write_tabular(model, expected, output)
