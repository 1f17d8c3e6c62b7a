"""Quality metrics and how a model's outputs become predictions to score."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from modelport.optimize.errors import DataError


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    classification: bool
    score: Callable[[np.ndarray, np.ndarray], float]

    def drop(self, baseline: float, candidate: float) -> tuple[float, str]:
        """How much worse the candidate is: points for scores in [0, 1], percent of the
        baseline for errors (MAE, RMSE), where a point has no fixed meaning."""
        if self.higher_is_better:
            return (baseline - candidate) * 100.0, "points"
        scale = abs(baseline) or 1e-12
        return (candidate - baseline) / scale * 100.0, "%"


def _accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(truth == predicted))


def _macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    scores = []
    for label in np.unique(np.concatenate([truth, predicted])):
        tp = np.sum((predicted == label) & (truth == label))
        fp = np.sum((predicted == label) & (truth != label))
        fn = np.sum((predicted != label) & (truth == label))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def _mae(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(np.abs(truth.astype(np.float64) - predicted)))


def _rmse(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.sqrt(np.mean((truth.astype(np.float64) - predicted) ** 2)))


METRICS = {
    "accuracy": Metric("accuracy", True, True, _accuracy),
    "f1": Metric("f1", True, True, _macro_f1),
    "mae": Metric("mae", False, False, _mae),
    "rmse": Metric("rmse", False, False, _rmse),
}


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name.lower()]
    except KeyError:
        raise DataError(f"unknown metric {name!r}; choose one of {sorted(METRICS)}") from None


def predictions(output: np.ndarray, *, classification: bool) -> np.ndarray:
    """Class labels from scores (argmax over the last axis, or a 0.5 / 0 threshold for a single
    probability / logit column), or a flat vector of values for regression."""
    if not classification:
        return output.reshape(len(output), -1)[:, 0].astype(np.float64)
    if output.ndim == 2 and output.shape[1] > 1:
        labels: np.ndarray = output.argmax(axis=1)  # numpy types argmax(axis=...) as Any
        return labels
    flat = output.reshape(len(output))
    if flat.dtype.kind == "f":
        threshold = 0.5 if flat.min() >= 0.0 and flat.max() <= 1.0 else 0.0
        return (flat > threshold).astype(np.int64)
    return flat


def score(metric: Metric, truth: np.ndarray, predicted: np.ndarray) -> float:
    if predicted.dtype.kind in "OSU" or truth.dtype.kind in "OSU":
        truth = np.array([_text(v) for v in truth.ravel()])
        predicted = np.array([_text(v) for v in predicted.ravel()])
    return metric.score(truth.ravel(), predicted.ravel())


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
