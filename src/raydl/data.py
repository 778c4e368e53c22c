"""From a source to model-ready columns: checks, the seeded split, standardisation.

`prepare(spec)` runs on the driver before Ray starts, so bad data fails fast with one line. It
reads a table (tabular data, images stored as flat pixels) or a built-in's `Arrays` (sequences,
masks, graphs...). The split depends only on each row's content and the data seed, never on the
number of workers or the order of the rows. Standardisation statistics are fitted on the train
split only and travel with the model as `Preprocessing`. A split is a mapping of columns with a
leading row axis: "x", "y" and whatever the data kind's collate reads.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from raydl.columns import MAX_CLASSES, id_values, label_type_ok
from raydl.datasets import Arrays, Builtin, load_source
from raydl.errors import DataError
from raydl.spec import DataSpec
from raydl.split import assign, id_keys, row_keys


@dataclass(frozen=True)
class Preprocessing:
    """What is needed to turn raw inputs into model input (saved with the model)."""

    features: list[str]  # tabular: the feature columns, in order ([] for array data)
    label: str
    task: str  # a registered task: "classification", "regression", ...
    classes: list  # original label values, index = class id (empty for regression)
    mean: list[float]  # per feature, or one for all; [] when the input is not scaled (token ids)
    std: list[float]
    target_mean: float = 0.0  # regression: the model learns (y - target_mean) / target_std
    target_std: float = 1.0
    kind: str = "tabular"  # the data kind (raydl.batches.DATA_KINDS)
    shape: list[int] | None = None  # one sample's input shape; None: (number of features,)
    kind_params: dict = field(default_factory=dict)  # what the data kind needs besides the rows

    @property
    def sample_shape(self) -> list[int]:
        return list(self.shape) if self.shape else [len(self.features)]

    def transform(self, X: np.ndarray) -> np.ndarray:
        if not self.mean:  # ids (tokens, node indices) are not scaled
            return np.asarray(X)
        z = X - np.asarray(self.mean)  # a new float64 array; then divided in place: one copy of X fewer at the peak
        z /= np.asarray(self.std)
        return z.astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        d = dict(d)
        image_shape = d.pop("image_shape", None)  # model directory formats 1 and 2
        if image_shape:
            d.update(kind="image", shape=list(image_shape))
        return cls(**d)


@dataclass(frozen=True)
class Split:
    cols: dict[str, np.ndarray]  # model-ready columns with a leading row axis ("x", "y", ...)

    @property
    def X(self) -> np.ndarray:
        return self.cols["x"]

    @property
    def y(self) -> np.ndarray:
        return self.cols["y"]

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.cols.values())

    def __len__(self) -> int:
        return len(self.cols["y"])


@dataclass(frozen=True)
class Prepared:
    train: Split
    val: Split
    test: Split
    prep: Preprocessing
    fingerprint: str
    raw_train: pa.Table | None  # raw feature columns of the train split (drift reference profile); None for array data

    def sample_inputs(self, spec=None, rows: int = 256) -> dict[str, np.ndarray]:  # noqa: ARG002 (as Streamed's)
        """Up to `rows` model-ready validation inputs (no target), e.g. to time inference."""
        return {k: v[:rows] for k, v in self.val.cols.items() if k != "y"}

    def describe(self) -> str:
        p = self.prep
        inputs = f"{len(p.features)} features" if p.features else f"{p.kind} inputs of shape {p.sample_shape}"
        return f"{len(self.train)}/{len(self.val)}/{len(self.test)} rows in memory, {inputs}, {p.task}"


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


def _labels(col: pa.ChunkedArray, task: str, where: str, declared: list | None = None) -> tuple[np.ndarray, list]:
    if not label_type_ok(col.type):
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
    if declared is not None:  # the class set is fixed (e.g. class-incremental experiences)
        return encode_declared(values, declared, where), list(declared)
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


def encode_declared(values: np.ndarray, declared: list, where: str) -> np.ndarray:
    """Label values as ids into the declared classes; a value outside them is an error."""
    index = {c: i for i, c in enumerate(declared)}
    uniq, inverse = np.unique(values, return_inverse=True)
    unknown = [v for v in uniq.tolist() if v not in index]
    if unknown:
        raise DataError(f"{where}.label: value(s) {unknown[:5]} are not among data.classes {declared}")
    return np.array([index[v] for v in uniq.tolist()], dtype=np.int64)[inverse.reshape(-1)]


def fingerprint(X: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(X).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()[:16]


def _check_split_sizes(n_train: int, n_val: int, n: int, min_train_rows: int) -> None:
    if n_train < min_train_rows:
        raise DataError(f"data: the train split has {n_train} row(s), fewer than the {min_train_rows} worker(s) asked for; add data or lower scaling.num_workers")
    if n_val == 0:
        raise DataError(f"data.split: the validation split is empty ({n} rows in all); add data or raise data.split.val")


def fractions(spec: DataSpec) -> tuple[float, float, float]:
    return spec.split.train, spec.split.val, spec.split.test


def prepare(spec: DataSpec, min_train_rows: int = 1) -> Prepared:
    table, builtin = load_source(spec)
    if isinstance(table, Arrays):
        return prepare_arrays(spec, table, builtin, min_train_rows)
    label = spec.label or (builtin.label if builtin else None)
    if label is None:
        raise DataError("data.label: no label column given; name the label column of your data")
    if table.num_rows == 0:
        raise DataError(f"data.source: {spec.source!r} has no rows")
    if label not in table.column_names:
        raise DataError(f"data.label: column {label!r} not in the data; columns: {table.column_names}")
    if spec.id_column is not None and spec.id_column not in table.column_names:
        raise DataError(f"data.id_column: column {spec.id_column!r} not in the data; columns: {table.column_names}")
    features = spec.features or [c for c in table.column_names if c not in (label, spec.id_column)]
    if label in features:
        raise DataError(f"data.features: the label column {label!r} is also listed as a feature")
    if not features:
        raise DataError("data.features: no feature columns left besides the label")
    task = spec.task if spec.task != "auto" else "classification" if spec.classes else (
        builtin.task if builtin else _infer_task(table.column(label)))
    X = feature_matrix(table, features)
    y, classes = _labels(table.column(label), task, "data", spec.classes)

    if spec.id_column is not None:  # a declared row id: the split follows it
        keys = id_keys(id_values(table.column(spec.id_column)))
    else:
        raw_label = table.column(label)
        if pa.types.is_dictionary(raw_label.type):
            raw_label = raw_label.cast(raw_label.type.value_type)
        keys = row_keys(X, raw_label.to_numpy(zero_copy_only=False))
    tr, va, te = (np.flatnonzero(assign(keys, spec.seed, fractions(spec)) == i) for i in range(3))
    _check_split_sizes(len(tr), len(va), len(y), min_train_rows)
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
    kind = builtin.kind if builtin else "tabular"
    shape = list(builtin.shape) if builtin and builtin.shape else None
    y, t_mean, t_std = _target(y, tr, task, spec.standardize)
    prep = Preprocessing(features, label, task, classes, mean.tolist(), std.tolist(), t_mean, t_std, kind, shape)

    def part(idx: np.ndarray) -> Split:
        with np.errstate(over="ignore", invalid="ignore"):
            Xs = prep.transform(X[idx])
        bad = ~np.isfinite(Xs)
        if bad.any():  # finite in float64, but not as float32 model input (|x| > 3.4e38)
            col = features[int(np.argwhere(bad)[0][1])]
            raise DataError(f"data.features: column {col!r} has values too large for float32 model input; rescale the column"
                            + ("" if spec.standardize != "none" else " or set data.standardize: feature"))
        return Split({"x": Xs, "y": y[idx]})

    return Prepared(part(tr), part(va), part(te), prep, fingerprint(X, y), table.select(features).take(tr))


def _target(y: np.ndarray, train: np.ndarray, task: str, standardize: str) -> tuple[np.ndarray, float, float]:
    """A regression target standardised on the train rows (the task reports metrics in label units)."""
    if task != "regression":
        return y, 0.0, 1.0
    t_mean, t_std = 0.0, 1.0
    if standardize != "none":
        t_mean, t_std = float(y[train].mean()), float(y[train].std()) or 1.0
    return ((y.astype(np.float64) - t_mean) / t_std).astype(np.float32), t_mean, t_std


def prepare_arrays(spec: DataSpec, data: Arrays, builtin: Builtin, min_train_rows: int = 1) -> Prepared:
    """`prepare` for data that is not a flat table: the split hashes every column of a row; a
    float input is standardised with one mean and std over the train split (standardize: feature
    or global), integer inputs (ids, tokens) are left as they are."""
    cols = {k: np.asarray(v) for k, v in data.cols.items()}
    n = len(data)
    if n == 0:
        raise DataError(f"data.source: {spec.source!r} has no rows")
    bad = [k for k, v in cols.items() if len(v) != n]
    if bad or "y" not in cols:
        raise DataError(f"data.source: {spec.source!r}: columns {bad or ['y']} do not have {n} rows")
    task = spec.task if spec.task != "auto" else builtin.task
    flat = np.concatenate([cols[k].reshape(n, -1).astype(np.float64) for k in sorted(cols)], axis=1)
    part = assign(row_keys(flat, np.zeros(n)), spec.seed, fractions(spec))
    tr, va, te = (np.flatnonzero(part == i) for i in range(3))
    _check_split_sizes(len(tr), len(va), n, min_train_rows)
    x, y = cols["x"], cols["y"]
    classes: list = []
    if data.classes is not None:  # y holds class ids already (class labels, or mask/box classes)
        classes = list(data.classes)
    elif task == "classification":
        y, classes = _labels(pa.chunked_array([y]), task, "data")
    mean, std = [], []
    if x.dtype.kind == "f":
        if spec.standardize != "none":
            mean, std = [float(x[tr].mean())], [float(x[tr].std()) or 1.0]
        else:
            mean, std = [0.0], [1.0]
    y, t_mean, t_std = _target(y, tr, task, spec.standardize)
    prep = Preprocessing([], builtin.label, task, classes, mean, std, t_mean, t_std, builtin.kind,
                         list(builtin.shape or x.shape[1:]), dict(data.params))
    model_ready = {**cols, "x": prep.transform(x), "y": y}

    def part_of(idx: np.ndarray) -> Split:
        return Split({k: v[idx] for k, v in model_ready.items()})

    h = hashlib.sha256()
    for k in sorted(cols):
        h.update(np.ascontiguousarray(cols[k]).tobytes())
    return Prepared(part_of(tr), part_of(va), part_of(te), prep, h.hexdigest()[:16], None)


def arrow_blocks(split: Split, num_blocks: int = 1) -> list[pa.Table]:
    """The split's columns as `num_blocks` Arrow tables of consecutive rows, in Ray Data's block format
    (tensor columns beyond one axis), for `raydl.sharding.Blocks.put`."""
    from ray.data.extensions import ArrowTensorArray

    def column(a: np.ndarray):
        return ArrowTensorArray.from_numpy(a) if a.ndim > 1 else a

    n = len(split)
    bounds = np.linspace(0, n, num=max(1, min(num_blocks, n)) + 1, dtype=int)
    return [
        pa.table({k: column(v[a:b]) for k, v in split.cols.items()})
        for a, b in zip(bounds[:-1], bounds[1:])
        if b > a
    ]
