"""A Parquet/CSV source read lazily with Ray Data: the driver never holds the rows.

`open_source(spec)` reads only the schema and checks the columns. `Source.stats(...)` is one
distributed pass: every batch returns a small mergeable `_Partial` (split counts, train-split
moments, label values, problems found), the driver merges them and decides. The data checks
and their one-line messages are those of `raydl.data.prepare`, with the file named where the
in-memory path names a row. `Source.split_datasets(...)` gives lazy model-ready datasets.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path

import numpy as np
import pyarrow as pa

from raydl import split
from raydl.data import MAX_CLASSES, Preprocessing, _label_type_ok
from raydl.datasets import DATASETS, _format_of, _is_uri
from raydl.errors import DataError
from raydl.spec import DataSpec

BATCH_ROWS = 65536
# Ray Data's read and map tasks ask for no CPU: Ray Train reserves the workers' CPUs, and the
# decoding shares the workers' cores, which mostly wait for batches anyway. (Ray Data's own
# ListFiles task still asks for one: `raydl.launch` leaves one free in an embedded Ray.)
TASK_ARGS = {"num_cpus": 0}
PATH = "path"  # the column Ray Data adds with include_paths=True
SPLITS = ("train", "val", "test")


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


@dataclass(frozen=True)
class SourceStats:
    """What one pass over the source learnt: split sizes, train-split scaling, the label."""

    n_train: int
    n_val: int
    n_test: int
    features: list[str]
    label: str
    task: str  # "classification" | "regression"
    classes: list  # sorted python scalars, index = class id (empty for regression)
    mean: list[float]
    std: list[float]
    target_mean: float
    target_std: float
    fingerprint: str

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.features, self.label, self.task, self.classes, self.mean, self.std,
                             None, self.target_mean, self.target_std)


@dataclass(frozen=True)
class _Moments:
    """Count, mean and sum of squared deviations per column; merged with Chan's formula."""

    n: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> _Moments:
        if len(x) == 0:
            return cls(0, np.zeros(x.shape[1]), np.zeros(x.shape[1]))
        mean = x.mean(axis=0)
        return cls(len(x), mean, ((x - mean) ** 2).sum(axis=0))

    def merge(self, other: _Moments) -> _Moments:
        n = self.n + other.n
        if n == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        return _Moments(n, mean, self.m2 + other.m2 + delta**2 * (self.n * other.n / n))


@dataclass(frozen=True)
class _Partial:
    """One batch's (or many merged batches') contribution to `Source.stats`."""

    rows: np.ndarray  # [3] rows per split
    key_sum: int
    moments: _Moments  # train rows: every feature, then the label (0 when not numeric)
    vmin: np.ndarray  # [F] over all rows
    vmax: np.ndarray
    values: frozenset  # distinct label values, at most MAX_CLASSES + 1 kept
    integral: bool  # every finite label value is a whole number
    problems: dict = field(default_factory=dict)  # (kind, column) -> (rows, first file)

    @classmethod
    def empty(cls, n_features: int) -> _Partial:
        return cls(np.zeros(3, np.int64), 0, _Moments.of(np.zeros((0, n_features + 1))),
                   np.full(n_features, np.inf), np.full(n_features, -np.inf), frozenset(), True)

    def merge(self, other: _Partial) -> _Partial:
        problems = dict(self.problems)
        for k, (n, first) in other.problems.items():
            problems[k] = (problems[k][0] + n, problems[k][1]) if k in problems else (n, first)
        return _Partial(self.rows + other.rows, (self.key_sum + other.key_sum) % 2**64,
                        self.moments.merge(other.moments), np.minimum(self.vmin, other.vmin),
                        np.maximum(self.vmax, other.vmax), _capped(self.values | other.values),
                        self.integral and other.integral, problems)


def _capped(values) -> frozenset:
    return frozenset(sorted(values)[: MAX_CLASSES + 1])


@dataclass(frozen=True)
class _Batch:
    """A batch decoded into numpy: float64 features (NaN for missing), label values, files."""

    X: np.ndarray
    label: np.ndarray  # nulls filled (NaN for floats, 0, False or "" for the rest)
    label_null: np.ndarray  # bool
    label_numeric: bool
    paths: np.ndarray | None

    def first_path(self, mask: np.ndarray, fallback: str) -> str:
        return str(self.paths[int(np.argmax(mask))]) if self.paths is not None else fallback


def _decode(batch: pa.Table, features: list[str], label: str) -> _Batch:
    X = np.empty((len(features), batch.num_rows)).T  # column-major: each column written in one run
    for j, f in enumerate(features):  # a file with text here fails the cast: "cannot read"
        X[:, j] = batch.column(f).cast(pa.float64()).to_numpy(zero_copy_only=False)
    y = batch.column(label)
    if pa.types.is_dictionary(y.type):
        y = y.cast(y.type.value_type)
    null = y.is_null().to_numpy(zero_copy_only=False)
    numeric = pa.types.is_integer(y.type) or pa.types.is_floating(y.type)
    if not pa.types.is_floating(y.type):  # float nulls become NaN below
        y = y.fill_null(False if pa.types.is_boolean(y.type) else 0 if numeric else "")
    values = y.to_numpy(zero_copy_only=False)
    paths = batch.column(PATH).to_numpy(zero_copy_only=False) if PATH in batch.column_names else None
    return _Batch(X, values, null, numeric, paths)




@dataclass(frozen=True)
class _Columns:
    """What the per-batch functions need (small, so it ships cheaply to every task)."""

    features: list[str]
    label: str
    source: str  # named in messages when the rows do not carry their file


class _StatsPass:
    """map_batches function: one pickled `_Partial` per batch."""

    def __init__(self, cols: _Columns, seed: int, fractions: tuple, want_values: bool) -> None:
        self.cols, self.seed, self.fractions, self.want_values = cols, seed, fractions, want_values

    def __call__(self, batch: pa.Table) -> pa.Table:
        partial = (self.partial(_decode(batch, self.cols.features, self.cols.label)) if batch.num_rows
                   else _Partial.empty(len(self.cols.features)))
        return pa.table({"state": pa.array([pickle.dumps(partial)], pa.binary())})

    def partial(self, b: _Batch) -> _Partial:
        keys = split.row_keys(b.X, b.label)
        part = split.assign(keys, self.seed, self.fractions)
        y = b.label.astype(np.float64) if b.label_numeric else np.zeros(len(b.label))
        ok = ~b.label_null & np.isfinite(y)
        values = _capped(np.unique(b.label[ok]).tolist()) if self.want_values else frozenset()
        train = part == 0
        return _Partial(np.bincount(part, minlength=3).astype(np.int64), split.key_sum(keys),
                        _Moments.of(np.column_stack([b.X[train], y[train]])),
                        b.X.min(axis=0), b.X.max(axis=0), values,
                        bool(np.all(y[ok] == np.round(y[ok]))), self.problems(b, ok))

    def problems(self, b: _Batch, label_ok: np.ndarray) -> dict:
        first = b.first_path
        bad = ~np.isfinite(b.X)
        found = {("value", self.cols.features[j]): (int(bad[:, j].sum()), first(bad[:, j], self.cols.source))
                 for j in np.flatnonzero(bad.any(axis=0))}
        nan = ~label_ok & ~b.label_null
        for kind, mask in (("null", b.label_null), ("nan", nan)):
            if mask.any():
                found[(kind, self.cols.label)] = (int(mask.sum()), first(mask, self.cols.source))
        return found


class _ModelReady:
    """map_batches function: the rows of one split as model input, x float32 [B, F] and y."""

    def __init__(self, cols: _Columns, stats: SourceStats, seed: int, fractions: tuple, part: int) -> None:
        self.cols, self.stats, self.seed, self.fractions, self.part = cols, stats, seed, fractions, part
        self.mean, self.std = np.asarray(stats.mean), np.asarray(stats.std)
        self.class_ids = {c: i for i, c in enumerate(stats.classes)}

    def __call__(self, batch: pa.Table) -> dict:
        b = _decode(batch, self.cols.features, self.cols.label)
        keep = split.assign(split.row_keys(b.X, b.label), self.seed, self.fractions) == self.part
        x = ((b.X[keep] - self.mean) / self.std).astype(np.float32)
        return {"x": x, "y": self.targets(b.label[keep])}

    def targets(self, values: np.ndarray) -> np.ndarray:
        if self.stats.task == "regression":
            y = (values.astype(np.float64) - self.stats.target_mean) / self.stats.target_std
            return y.astype(np.float32)
        uniq, inverse = np.unique(values, return_inverse=True)
        unseen = [v for v in uniq.tolist() if v not in self.class_ids]
        if unseen:
            raise DataError(f"data.label: value(s) {unseen[:5]} were not in the data when the classes were counted")
        ids = np.array([self.class_ids[v] for v in uniq.tolist()], dtype=np.int64)
        return ids[inverse.reshape(-1)]


@dataclass(frozen=True)
class Source:
    """A lazily read Parquet/CSV source whose columns have been checked."""

    spec: DataSpec
    dataset: object  # ray.data.Dataset, not executed; rows carry their file in PATH when it can
    features: list[str]
    label: str
    label_type: pa.DataType
    kind: str  # "parquet" | "csv"

    @property
    def _cols(self) -> _Columns:
        return _Columns(self.features, self.label, self.spec.source)

    def stats(self, seed: int, fractions: tuple[float, float, float], standardize: str = "feature",
              task: str = "auto", min_train_rows: int = 1) -> SourceStats:
        """One distributed pass; the driver merges one small partial per batch and decides."""
        label_type = _value_type(self.label_type)
        if task == "regression" and not (pa.types.is_integer(label_type) or pa.types.is_floating(label_type)):
            raise DataError(f"data.label: regression needs a numeric label, got type {label_type}")
        fn = _StatsPass(self._cols, seed, tuple(fractions), want_values=task != "regression")
        states = self.dataset.map_batches(fn, batch_format="pyarrow", batch_size=BATCH_ROWS, **TASK_ARGS)
        try:
            partials = [pickle.loads(s) for b in states.iter_batches(batch_format="pyarrow", batch_size=None)
                        for s in b.column("state").to_pylist()]
        except Exception as e:  # a file that cannot be parsed, or whose column types clash
            if not _read_failure(e):
                raise
            raise _cannot_read(self.spec.source, self.kind, e) from None
        total = reduce(_Partial.merge, partials, _Partial.empty(len(self.features)))
        return self._decide(total, standardize, task, min_train_rows)

    def _decide(self, p: _Partial, standardize: str, task: str, min_train_rows: int) -> SourceStats:
        n_train, n_val, n_test = (int(v) for v in p.rows)
        n = n_train + n_val + n_test
        if n == 0:
            raise DataError(f"data.source: {self.spec.source!r} has no rows")
        _raise_problems(p.problems, self.features, self.label)
        task = _task(task, self.label_type, p)
        classes = _classes(p.values) if task == "classification" else []
        if n_train < min_train_rows:
            raise DataError(f"data: the train split has {n_train} row(s), fewer than the {min_train_rows} worker(s) asked for; add data or lower scaling.num_workers")
        if n_val == 0:
            raise DataError(f"data.split: the validation split is empty ({n} rows in all); add data or raise data.split.val")
        mean, std = _scaling(p.moments, len(self.features), standardize)
        _check_float32(p, mean, std, self.features, standardize)
        t_mean, t_std = 0.0, 1.0
        if task == "regression" and standardize != "none":
            t_mean = float(p.moments.mean[-1])
            t_std = float(np.sqrt(p.moments.m2[-1] / p.moments.n)) or 1.0
        fp = split.fingerprint(p.key_sum, n, [*self.features, self.label])
        return SourceStats(n_train, n_val, n_test, list(self.features), self.label, task, classes,
                           mean.tolist(), std.tolist(), t_mean, t_std, fp)

    def split_datasets(self, stats: SourceStats, seed: int, fractions: tuple[float, float, float]) -> dict:
        """Lazy datasets "train", "val", "test" with columns x (float32 [F]) and y; nothing runs."""
        return {name: self.dataset.map_batches(_ModelReady(self._cols, stats, seed, tuple(fractions), i),
                                               batch_format="pyarrow", batch_size=BATCH_ROWS, **TASK_ARGS)
                for i, name in enumerate(SPLITS)}


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _raise_problems(problems: dict, features: list[str], label: str) -> None:
    """The first problem in the order `data.prepare` checks: features in order, then the label."""
    for f in features:
        if ("value", f) in problems:
            n, file = problems[("value", f)]
            raise DataError(f"data.features: column {f!r} has {n} NaN, missing or infinite value(s) (first in file {file!r}); clean or impute them first")
    if ("null", label) in problems:
        n, file = problems[("null", label)]
        raise DataError(f"data.label: the label column has {n} missing value(s) (first in file {file!r})")
    if ("nan", label) in problems:
        n, file = problems[("nan", label)]
        raise DataError(f"data.label: the label column has {n} NaN or infinite value(s) (first in file {file!r}); drop or fill them")


def _task(declared: str, label_type: pa.DataType, p: _Partial) -> str:
    """`data._infer_task` from merged state: a float label of at most 20 whole values is classes."""
    if declared != "auto":
        return declared
    if pa.types.is_floating(label_type):
        return "classification" if p.integral and len(p.values) <= 20 else "regression"
    return "classification"


def _classes(values: frozenset) -> list:
    if len(values) < 2:
        raise DataError(f"data.label: classification needs at least 2 classes, found {len(values)}")
    if len(values) > MAX_CLASSES:
        raise DataError(f"data.label: more than {MAX_CLASSES} distinct values is too many classes (at most {MAX_CLASSES}); set data.task: regression?")
    return sorted(values)


def _scaling(m: _Moments, n_features: int, standardize: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per feature over the train split: per column, one for all, or none."""
    if standardize == "none":
        return np.zeros(n_features), np.ones(n_features)
    mean, m2, n = m.mean[:n_features], m.m2[:n_features], max(m.n, 1)
    if standardize == "global":  # merge the columns as if they were one long column
        g = mean.mean()
        total_m2 = m2.sum() + n * ((mean - g) ** 2).sum()
        mean, m2, n = np.full(n_features, g), np.full(n_features, total_m2), n * n_features
    std = np.sqrt(m2 / n)
    std[std == 0] = 1.0
    return mean.copy(), std


def _check_float32(p: _Partial, mean: np.ndarray, std: np.ndarray, features: list[str], standardize: str) -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        ends = np.stack([(p.vmin - mean) / std, (p.vmax - mean) / std]).astype(np.float32)
    bad = ~np.isfinite(ends).all(axis=0)
    if bad.any():
        col = features[int(np.argmax(bad))]
        raise DataError(f"data.features: column {col!r} has values too large for float32 model input; rescale the column"
                        + ("" if standardize != "none" else " or set data.standardize: feature"))


def open_source(spec: DataSpec) -> Source:
    """Check a Parquet/CSV file, directory or URI from its schema and read it lazily."""
    if spec.source in DATASETS:
        raise DataError(f"data.source: {spec.source!r} is a built-in dataset; open_source reads Parquet/CSV files")
    kind = _format_of(spec.source, spec.format)
    schema = _schema(spec.source, kind)
    features, label = _check_columns(spec, schema)
    dataset = _read(spec.source, kind, schema, [*features, label])
    return Source(spec, dataset, features, label, schema.field(label).type, kind)


def _read_failure(e: Exception) -> bool:
    """A Ray task error caused by the data (Arrow parse/cast/concat, I/O), not by a bug."""
    import ray.exceptions

    cause = getattr(e, "cause", None)
    return isinstance(e, ray.exceptions.RayTaskError) and (
        isinstance(cause, (pa.ArrowException, OSError))
        or type(cause).__name__ == "ArrowConversionError"  # Ray's: blocks whose schemas clash
        or str(cause).startswith("Failed to read"))  # Ray's CSV reader wraps the parse error


def _cannot_read(source: str, kind: str, e: Exception) -> DataError:
    e = getattr(e, "cause", None) or e  # a Ray task error: the error it wraps
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return DataError(f"data.source: cannot read {source!r} as {kind}: {first}")


def _schema(source: str, kind: str) -> pa.Schema:
    """The schema only (Parquet footers; the first block of a CSV), as `datasets.read_table` sees it."""
    import pyarrow.dataset as pds

    if not _is_uri(source) and not Path(source).exists():
        raise DataError(f"data.source: no file or directory at {source!r} (and it is not a built-in dataset: {', '.join(DATASETS.names())})")
    try:
        return pds.dataset(source, format=kind).schema
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, FileNotFoundError) as e:
        raise _cannot_read(source, kind, e) from None


def _read(source: str, kind: str, schema: pa.Schema, columns: list[str]):
    """Only the columns used, each row naming its file. CSV files are parsed with the types
    found on the driver (number features as float64), as `datasets.read_table` parses them: a
    later file whose inference would differ fails with a one-line error, not a schema clash."""
    import pyarrow.csv as pcsv
    import ray.data

    path = source if _is_uri(source) else str(Path(source).resolve())
    paths = PATH not in schema.names
    try:
        if kind == "parquet":
            return ray.data.read_parquet(path, columns=columns, include_paths=paths, **TASK_ARGS)
        types = {c: schema.field(c).type for c in columns}
        types.update({c: pa.float64() for c in columns[:-1] if not pa.types.is_boolean(types[c])})
        options = pcsv.ConvertOptions(column_types=types, include_columns=columns)
        return ray.data.read_csv(path, convert_options=options, include_paths=paths, **TASK_ARGS)
    except (ValueError, OSError, pa.ArrowException) as e:
        raise _cannot_read(source, kind, e) from None


def _check_columns(spec: DataSpec, schema: pa.Schema) -> tuple[list[str], str]:
    """`data.prepare`'s column checks, from the schema alone."""
    names, label = schema.names, spec.label
    if label is None:
        raise DataError("data.label: no label column given; name the label column of your data")
    if label not in names:
        raise DataError(f"data.label: column {label!r} not in the data; columns: {names}")
    features = spec.features or [c for c in names if c != label]
    if label in features:
        raise DataError(f"data.features: the label column {label!r} is also listed as a feature")
    if not features:
        raise DataError("data.features: no feature columns left besides the label")
    missing = [f for f in features if f not in names]
    if missing:
        raise DataError(f"data.features: column(s) {missing} not in the data; columns: {names}")
    for f in features:
        t = schema.field(f).type
        if not _numeric(t):
            raise DataError(f"data.features: column {f!r} has type {t}; features must be numeric (int, float or bool)")
    t = schema.field(label).type
    if not _label_type_ok(t):
        raise DataError(f"data.label: the label column has type {t}; a label must be an integer, "
                        "float, bool or string (categorical) column")
    return list(features), label
