"""From a source table to clean arrays: column checks, the seeded split, standardisation.

`prepare(spec)` runs on the driver before Ray starts, so bad data fails fast with one line.
The split depends only on each row's content and the data seed, never on the number of workers
or the order of the rows. Standardisation
statistics are fitted on the train split only and travel with the model as `Preprocessing`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from raydl.datasets import load_source
from raydl.errors import DataError
from raydl.spec import DataSpec
from raydl.split import assign, row_keys

MAX_CLASSES = 1000


@dataclass(frozen=True)
class Preprocessing:
    """What is needed to turn raw feature columns into model input (saved with the model)."""

    features: list[str]
    label: str
    task: str  # "classification" | "regression"
    classes: list  # original label values, index = class id (empty for regression)
    mean: list[float]
    std: list[float]
    image_shape: list[int] | None = None
    target_mean: float = 0.0  # regression: the model learns (y - target_mean) / target_std
    target_std: float = 1.0

    def transform(self, X: np.ndarray) -> np.ndarray:
        return ((X - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(**d)


@dataclass(frozen=True)
class Split:
    X: np.ndarray  # float32, standardised
    y: np.ndarray  # int64 class ids or float32 targets

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Prepared:
    train: Split
    val: Split
    test: Split
    prep: Preprocessing
    fingerprint: str
    raw_train: pa.Table  # raw feature columns of the train split (for drift reference profiles)


def feature_matrix(table: pa.Table, features: list[str], where: str = "data") -> np.ndarray:
    """Numeric feature columns -> float64 matrix; non-numeric columns and NaN/inf are errors."""
    missing = [f for f in features if f not in table.column_names]
    if missing:
        raise DataError(f"{where}.features: column(s) {missing} not in the data; columns: {table.column_names}")
    cols = []
    for f in features:
        col = table.column(f)
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
            raise DataError(f"{where}.features: column {f!r} has type {col.type}; features must be numeric (int, float or bool)")
        arr = col.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = ~np.isfinite(arr)
        if bad.any():
            raise DataError(f"{where}.features: column {f!r} has {int(bad.sum())} NaN, missing or infinite value(s) (first at row {int(np.argmax(bad))}); clean or impute them first")
        cols.append(arr)
    return np.stack(cols, axis=1) if cols else np.zeros((table.num_rows, 0))


def _infer_task(col: pa.ChunkedArray) -> str:
    if pa.types.is_floating(col.type):
        vals = col.to_numpy(zero_copy_only=False)
        if not np.all(np.isfinite(vals)):
            return "classification"  # _labels then names the NaN/inf values
        if np.all(np.isfinite(vals)) and np.all(vals == np.round(vals)) and len(np.unique(vals)) <= 20:
            return "classification"
        return "regression"
    return "classification"


def _label_type_ok(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t))


def _labels(col: pa.ChunkedArray, task: str, where: str) -> tuple[np.ndarray, list]:
    if not _label_type_ok(col.type):
        raise DataError(f"{where}.label: the label column has type {col.type}; a label must be an integer, "
                        "float, bool or string (categorical) column")
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if col.null_count:
        raise DataError(f"{where}.label: the label column has {col.null_count} missing value(s)")
    values = col.to_numpy(zero_copy_only=False)
    if pa.types.is_floating(col.type):
        bad = ~np.isfinite(values)
        if bad.any():
            raise DataError(f"{where}.label: the label column has {int(bad.sum())} NaN or infinite value(s) "
                            f"(first at row {int(np.argmax(bad))}); drop or fill them")
    if task == "regression":
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            raise DataError(f"{where}.label: regression needs a numeric label, got type {col.type}")
        y = values.astype(np.float32)
        if not np.all(np.isfinite(y)):
            raise DataError(f"{where}.label: the regression label has NaN or infinite values")
        return y, []
    classes, y = np.unique(values, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"{where}.label: classification needs at least 2 classes, found {len(classes)}")
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{where}.label: {len(classes)} distinct values is too many classes (at most {MAX_CLASSES}); set data.task: regression?")
    return y.astype(np.int64), [c.item() if hasattr(c, "item") else c for c in classes]


def split_indices(X: np.ndarray, label: np.ndarray, fractions: tuple[float, float, float], seed: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of train/val/test, from each row's content hashed with the seed (`raydl.split`):
    the same rows as the Ray Data path puts there, for any worker count or file layout."""
    part = assign(row_keys(X, label), seed, fractions)
    return tuple(np.flatnonzero(part == i) for i in range(3))


def fingerprint(X: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(X).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()[:16]


def prepare(spec: DataSpec, min_train_rows: int = 1) -> Prepared:
    table, builtin = load_source(spec)
    label = spec.label or (builtin.label if builtin else None)
    if label is None:
        raise DataError("data.label: no label column given; name the label column of your data")
    if table.num_rows == 0:
        raise DataError(f"data.source: {spec.source!r} has no rows")
    if label not in table.column_names:
        raise DataError(f"data.label: column {label!r} not in the data; columns: {table.column_names}")
    features = spec.features or [c for c in table.column_names if c != label]
    if label in features:
        raise DataError(f"data.features: the label column {label!r} is also listed as a feature")
    if not features:
        raise DataError("data.features: no feature columns left besides the label")
    task = spec.task if spec.task != "auto" else (builtin.task if builtin else _infer_task(table.column(label)))
    X = feature_matrix(table, features)
    y, classes = _labels(table.column(label), task, "data")

    raw_label = table.column(label)
    if pa.types.is_dictionary(raw_label.type):
        raw_label = raw_label.cast(raw_label.type.value_type)
    tr, va, te = split_indices(X, raw_label.to_numpy(zero_copy_only=False), (spec.split.train, spec.split.val, spec.split.test), spec.seed)
    if len(tr) < min_train_rows:
        raise DataError(f"data: the train split has {len(tr)} row(s), fewer than the {min_train_rows} worker(s) asked for; add data or lower scaling.num_workers")
    if len(va) == 0:
        raise DataError(f"data.split: the validation split is empty ({len(y)} rows in all); add data or raise data.split.val")
    if spec.standardize != "none":
        # "feature": a mean and std per column; "global": one for all (pixels sharing a scale keep
        # their relative contrast, and a near-constant border pixel is not blown up 1/std-fold).
        axis = 0 if spec.standardize == "feature" else None
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught below, as non-finite input
            mean = np.broadcast_to(X[tr].mean(axis=axis), X.shape[1]).copy()
            std = np.broadcast_to(X[tr].std(axis=axis), X.shape[1]).copy()
        std[std == 0] = 1.0
    else:
        mean, std = np.zeros(X.shape[1]), np.ones(X.shape[1])
    image_shape = list(builtin.image_shape) if builtin and builtin.image_shape else None
    t_mean, t_std = 0.0, 1.0
    if task == "regression" and spec.standardize != "none":
        t_mean, t_std = float(y[tr].mean()), float(y[tr].std()) or 1.0
    prep = Preprocessing(features, label, task, classes, mean.tolist(), std.tolist(), image_shape, t_mean, t_std)
    if task == "regression":  # the model learns the standardised target; the task reports label units
        y = ((y.astype(np.float64) - t_mean) / t_std).astype(np.float32)

    def part(idx: np.ndarray) -> Split:
        with np.errstate(over="ignore", invalid="ignore"):
            Xs = prep.transform(X[idx])
        bad = ~np.isfinite(Xs)
        if bad.any():  # finite in float64, but not as float32 model input (|x| > 3.4e38)
            col = features[int(np.argwhere(bad)[0][1])]
            raise DataError(f"data.features: column {col!r} has values too large for float32 model input; rescale the column"
                            + ("" if spec.standardize != "none" else " or set data.standardize: feature"))
        return Split(Xs, y[idx])

    return Prepared(part(tr), part(va), part(te), prep, fingerprint(X, y), table.select(features).take(tr))


def to_ray_dataset(split: Split, num_blocks: int = 1):
    """A Ray Data dataset with a tensor column `x` and a column `y`, in `num_blocks` blocks."""
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    n = len(split)
    bounds = np.linspace(0, n, num=max(1, min(num_blocks, n)) + 1, dtype=int)
    tables = [
        pa.table({"x": ArrowTensorArray.from_numpy(split.X[a:b]), "y": split.y[a:b]})
        for a, b in zip(bounds[:-1], bounds[1:])
        if b > a
    ]
    return ray.data.from_arrow(tables)
