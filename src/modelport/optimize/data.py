"""Data files for conversion checks, calibration, training and evaluation.

`.npz` files hold `x` (features) and optionally `y` (labels or targets); arrays named after a
model's inputs feed a model with several inputs. CSV files (with a header row) are tabular: every
column is a feature except the target column (`y`, `label` or `target`, or the one named).
Nothing is downloaded.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelport.optimize.errors import DataError

TARGET_COLUMNS = ("y", "label", "target")


@dataclass(frozen=True)
class Dataset:
    """Model inputs by name (`x` for a model's only input) and optional labels."""

    inputs: dict[str, np.ndarray]
    y: np.ndarray | None = None
    source: str = "<memory>"
    _rows: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise DataError(f"{self.source}: no input arrays (expected 'x')")
        counts = {name: len(array) for name, array in self.inputs.items()}
        rows = set(counts.values())
        if len(rows) != 1:
            raise DataError(f"{self.source}: input arrays have different row counts {counts}")
        (n,) = rows
        if n == 0:
            raise DataError(f"{self.source}: no rows")
        if self.y is not None and len(self.y) != n:
            raise DataError(f"{self.source}: {n} rows of inputs but {len(self.y)} labels")
        object.__setattr__(self, "_rows", n)

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray | None = None) -> Dataset:
        return cls({"x": np.asarray(x)}, None if y is None else np.asarray(y))

    def __len__(self) -> int:
        return self._rows

    @property
    def x(self) -> np.ndarray:
        if "x" not in self.inputs:
            raise DataError(f"{self.source}: no array named 'x'")
        return self.inputs["x"]

    def labels(self) -> np.ndarray:
        if self.y is None:
            raise DataError(f"{self.source}: no labels ('y') to measure against")
        return self.y

    def take(self, rows: slice | np.ndarray) -> Dataset:
        return Dataset(
            {name: array[rows] for name, array in self.inputs.items()},
            None if self.y is None else self.y[rows],
            self.source,
        )

    def batches(self, size: int) -> Iterator[Dataset]:
        for start in range(0, len(self), size):
            yield self.take(slice(start, start + size))

    def feeds(self, input_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Arrays for a model's inputs: by name, or `x` when the model has one input."""
        if all(name in self.inputs for name in input_names):
            return {name: self.inputs[name] for name in input_names}
        if len(input_names) == 1 and "x" in self.inputs:
            return {input_names[0]: self.inputs["x"]}
        raise DataError(
            f"{self.source}: the model's inputs are {list(input_names)}; the data has "
            f"{sorted(self.inputs)} (use 'x' for a model with one input, or name the arrays "
            "after the inputs)"
        )


def load_data(path: Path | str, *, target: str | None = None) -> Dataset:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _load_npz(path)
    if suffix == ".csv":
        return _load_csv(path, target)
    raise DataError(f"{path}: data files are .npz (arrays x and y) or .csv")


def _load_npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    y = arrays.pop("y", None)
    return Dataset(arrays, y, str(path))


def _load_csv(path: Path, target: str | None) -> Dataset:
    with path.open(newline="", encoding="utf-8") as source:
        rows = list(csv.reader(source))
    if len(rows) < 2:
        raise DataError(f"{path}: a CSV file needs a header row and at least one data row")
    header, body = rows[0], rows[1:]
    if target is not None and target not in header:
        raise DataError(f"{path}: no column named {target!r} (columns: {header})")
    label = target or next((name for name in TARGET_COLUMNS if name in header), None)
    index = header.index(label) if label else None
    try:
        table = np.array(body, dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{path}: every CSV value must be a number ({exc})") from None
    if table.ndim != 2 or table.shape[1] != len(header):
        raise DataError(f"{path}: rows do not all have {len(header)} columns")
    features = [i for i in range(len(header)) if i != index]
    y = None if index is None else table[:, index]
    if y is not None and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    return Dataset({"x": table[:, features].astype(np.float32)}, y, str(path))
