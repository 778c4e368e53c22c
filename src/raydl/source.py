"""A Parquet/CSV source read lazily with Ray Data: the driver never holds the rows.

`open_source(spec)` reads only the schema and checks the columns. `Source.stats(...)` is one
distributed pass: every batch returns a small mergeable `Partial` (split counts, train-split
moments, label values, problems found), the driver merges them and decides. The data checks
and their one-line messages are those of `raydl.data.prepare`, with the file named where the
in-memory path names a row. `Source.split_datasets(...)` gives lazy model-ready datasets.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from raydl import split, storage
from raydl.columns import MAX_CLASSES, label_type_ok, value_type
from raydl.data import Preprocessing
from raydl.datasets import DATASETS, _format_of, _is_uri
from raydl.drift.partial import ProfilePartial, ProfilePass
from raydl.drift.profile import sample_key_bound
from raydl.errors import DataError
from raydl.source_batches import (
    PATH,
    PROFILE,
    Columns,
    ModelReady,
    Moments,
    Partial,
    RawRows,
    StatsPass,
)
from raydl.spec import DataSpec

# The per-batch functions take whole blocks (batch_size=None): a map with a batch size is not fused
# into the read, and an unfused pass runs twice the tasks (and worker processes) and copies every
# block through the object store once more.
BLOCK = None
SPLITS = ("train", "val", "test")
# Largest block a read task yields. Ray Data's default (128 MiB) makes a 200k-row file one block:
# no worker gets a row before the whole file is decoded, and the coordinator hands out whole
# files. Blocks of a few MiB (~10k rows of 64 float32 features) reach the workers while the rest
# of the file is still being read.
READ_BLOCK_BYTES = 4 * 2**20


def task_args(read: bool = False) -> dict:
    """Ray Data's read and map tasks ask for no CPU: Ray Train reserves the workers' CPUs, and the
    decoding shares the workers' cores, which mostly wait for batches anyway. (See
    `raydl.session.STREAM_CPUS` for the one CPU kept for Ray Data's file listing.) A task
    that asks for nothing is never held back by the scheduler, so at most one per cluster CPU runs
    at once: uncapped, a 5M-row pass started 37-74 worker processes on 2 cores (bench/RESULTS.md).
    (Ray Data warns when a cap is above the number of blocks to read; for a small source it is.)"""
    import ray
    import ray.data

    warnings.filterwarnings("ignore", "The maximum number of concurrent tasks", UserWarning)
    cap = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return {"num_cpus": 0, **({"concurrency": cap} if read else {"compute": ray.data.TaskPoolStrategy(size=cap)})}


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
                             target_mean=self.target_mean, target_std=self.target_std)


@dataclass(frozen=True)
class Source:
    """A lazily read Parquet/CSV source whose columns have been checked."""

    spec: DataSpec
    schema: pa.Schema
    features: list[str]
    label: str
    label_type: pa.DataType
    kind: str  # "parquet" | "csv"
    files: int

    def read(self, shuffle_seed: int | None = None):
        """The lazy Ray Data read (not executed; rows carry their file in PATH when they can).
        Made on use, so checking a source never starts Ray. With `shuffle_seed`, every execution
        (every epoch) reads the files in another seeded order."""
        ids = [self.spec.id_column] if self.spec.id_column else []
        return _read(self.spec.source, self.kind, self.schema, self.features, [self.label, *ids], self.files, shuffle_seed)

    @property
    def _cols(self) -> Columns:
        return Columns(self.features, self.label, self.spec.source, self.spec.id_column)

    def stats(self, seed: int, fractions: tuple[float, float, float], standardize: str = "feature",
              task: str = "auto", min_train_rows: int = 1) -> SourceStats:
        """One distributed pass; the driver merges one small partial per batch and decides."""
        return self.stats_and_profile(seed, fractions, standardize, task, min_train_rows)[0]

    def stats_and_profile(self, seed: int, fractions: tuple[float, float, float], standardize: str = "feature",
                          task: str = "auto", min_train_rows: int = 1) -> tuple[SourceStats, ProfilePartial]:
        """`stats`, and the drift reference profile's first pass over the train rows (moments
        and a uniform bottom-k sample of `PROFILE.sample_size` rows) from the same pass."""
        label_type = value_type(self.label_type)
        if task == "regression" and not (pa.types.is_integer(label_type) or pa.types.is_floating(label_type)):
            raise DataError(f"data.label: regression needs a numeric label, got type {label_type}")
        k = PROFILE.sample_size
        rows = self.row_count()
        # Rows whose sample key is above the bound cannot make the bottom-k: each batch ships ~k/N of
        # its train rows instead of k (without it, 300 batches would each ship a 50k-row sample).
        bound = sample_key_bound(k, int(rows * fractions[0] * 0.95) if rows else None)
        for key_bound in (bound, 1.0) if bound < 1.0 else (1.0,):
            total = self._pass(seed, fractions, task, ProfilePass(self.features, [], k, PROFILE.seed, key_bound))
            if len(total.profile.sample_keys) >= min(k, int(total.rows[0])):
                break  # else fewer than k train keys fell under the bound (~12 sd away): once more without
        return self._decide(total, standardize, task, min_train_rows), total.profile

    def _pass(self, seed: int, fractions: tuple, task: str, profile: ProfilePass) -> Partial:
        fn = StatsPass(self._cols, seed, tuple(fractions), task != "regression", profile)
        states = self.read().map_batches(fn, batch_format="pyarrow", batch_size=BLOCK, **task_args())
        total = Partial.empty(self.features, profile)
        try:  # merged as they come: the driver holds one partial at a time, not one per batch
            for b in states.iter_batches(batch_format="pyarrow", batch_size=None):
                for state in b.column("state").to_pylist():
                    total = total.merge(pickle.loads(state))
        except Exception as e:  # a file that cannot be parsed, or whose column types clash
            if not _read_failure(e):
                raise
            raise _cannot_read(self.spec.source, self.kind, e) from None
        return total

    def row_count(self) -> int | None:
        """Rows in the source from Parquet footers alone (None for CSV: that needs a read)."""
        if self.kind != "parquet":
            return None
        import pyarrow.dataset as pds

        fs, path = storage.filesystem(self.spec.source)
        try:
            return pds.dataset(path, format="parquet", filesystem=fs).count_rows()
        except (OSError, pa.ArrowException):
            return None

    def raw_split(self, seed: int, fractions: tuple[float, float, float], part: int = 0):
        """A lazy dataset of one split's raw feature columns (train: part 0)."""
        return self.read().map_batches(RawRows(self._cols, seed, tuple(fractions), part),
                                        batch_format="pyarrow", batch_size=BLOCK, **task_args())

    def _decide(self, p: Partial, standardize: str, task: str, min_train_rows: int) -> SourceStats:
        n_train, n_val, n_test = (int(v) for v in p.rows)
        n = n_train + n_val + n_test
        if n == 0:
            raise DataError(f"data.source: {self.spec.source!r} has no rows")
        _raise_problems(p.problems, self.features, self.label)
        task = "classification" if self.spec.classes and task == "auto" else _task(task, self.label_type, p)
        classes = _classes(p.values, self.spec.classes) if task == "classification" else []
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

    def split_datasets(self, stats: SourceStats, seed: int, fractions: tuple[float, float, float],
                       shuffle: bool = False) -> dict:
        """Lazy datasets "train", "val", "test" with columns x (float32 [F]) and y; nothing runs.
        With `shuffle`, the train split reads its files in a new seeded order every epoch (the
        workers' local shuffle buffer then mixes rows across the files being read)."""
        return {name: self.read(seed if shuffle and name == "train" else None).map_batches(
                    ModelReady(self._cols, stats, seed, tuple(fractions), i),
                    batch_format="pyarrow", batch_size=BLOCK, **task_args())
                for i, name in enumerate(SPLITS)}


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


def _task(declared: str, label_type: pa.DataType, p: Partial) -> str:
    """`data._infer_task` from merged state: a float label of at most 20 whole values is classes."""
    if declared != "auto":
        return declared
    if pa.types.is_floating(label_type):
        return "classification" if p.integral and len(p.values) <= 20 else "regression"
    return "classification"


def _classes(values: frozenset, declared: list | None = None) -> list:
    if declared is not None:  # the class set is fixed (e.g. class-incremental experiences)
        unknown = sorted(set(values) - set(declared), key=str)
        if unknown:
            raise DataError(f"data.label: value(s) {unknown[:5]} are not among data.classes {declared}")
        return list(declared)
    if len(values) < 2:
        raise DataError(f"data.label: classification needs at least 2 classes, found {len(values)}")
    if len(values) > MAX_CLASSES:
        raise DataError(f"data.label: more than {MAX_CLASSES} distinct values is too many classes (at most {MAX_CLASSES}); set data.task: regression?")
    return sorted(values)


def _scaling(m: Moments, n_features: int, standardize: str) -> tuple[np.ndarray, np.ndarray]:
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


def _check_float32(p: Partial, mean: np.ndarray, std: np.ndarray, features: list[str], standardize: str) -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        ends = np.stack([(p.vmin - mean) / std, (p.vmax - mean) / std]).astype(np.float32)
    bad = ~np.isfinite(ends).all(axis=0)
    if bad.any():
        col = features[int(np.argmax(bad))]
        raise DataError(f"data.features: column {col!r} has values too large for float32 model input; rescale the column"
                        + ("" if standardize != "none" else " or set data.standardize: feature"))


def open_source(spec: DataSpec) -> Source:
    """Check a Parquet/CSV file, directory or URI from its schema alone (no rows are read, Ray is not touched)."""
    if spec.source in DATASETS:
        raise DataError(f"data.source: {spec.source!r} is a built-in dataset; open_source reads Parquet/CSV files")
    kind = _format_of(spec.source, spec.format)
    schema, files = _schema(spec.source, kind)
    features, label = _check_columns(spec, schema)
    return Source(spec, schema, features, label, schema.field(label).type, kind, files)


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


def _schema(source: str, kind: str) -> tuple[pa.Schema, int]:
    """The schema only (Parquet footers; the first block of a CSV), as `datasets.read_table` sees
    it, and how many files there are."""
    import pyarrow.dataset as pds

    if not _is_uri(source) and not Path(source).exists():
        raise DataError(f"data.source: no file or directory at {source!r} (and it is not a built-in dataset: {', '.join(DATASETS.names())})")
    fs, path = storage.filesystem(source)
    try:
        ds = pds.dataset(path, format=kind, filesystem=fs)
        return ds.schema, len(ds.files)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, FileNotFoundError) as e:
        raise _cannot_read(source, kind, e) from None


def _read(source: str, kind: str, schema: pa.Schema, features: list[str], others: list[str], files: int,
          shuffle_seed: int | None = None):
    """Only the columns used, each row naming its file. CSV files are parsed with the types
    found on the driver (number features as float64), as `datasets.read_table` parses them: a
    later file whose inference would differ fails with a one-line error, not a schema clash."""
    import pyarrow.csv as pcsv
    import ray.data

    fs, path = storage.filesystem(source)  # an s3:// endpoint from the environment, short timeouts
    paths = PATH not in schema.names
    columns = [*features, *others]
    # One read task per file: a read split further into blocks is not fused with the map after it.
    args = {**task_args(read=True), "override_num_blocks": max(files, 1)}
    if shuffle_seed is not None:  # a new order per execution, derived from the seed
        args["shuffle"] = ray.data.FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True)
    try:
        if kind == "parquet":
            ds = _read_parquet_v1(path, filesystem=fs, columns=columns, include_paths=paths, **args)
        else:
            types = {c: schema.field(c).type for c in columns}
            types.update({c: pa.float64() for c in features if not pa.types.is_boolean(types[c])})
            options = pcsv.ConvertOptions(column_types=types, include_columns=columns)
            ds = ray.data.read_csv(path, filesystem=fs, convert_options=options, include_paths=paths, **args)
    except (ValueError, OSError, pa.ArrowException) as e:
        raise _cannot_read(source, kind, e) from None
    # A file whose column cannot be cast fails in the map function fused into the read: keep its
    # Arrow error as the task error's cause (Ray Data would wrap it in a bare UserCodeException).
    ds.context.raise_original_map_exception = True
    return ds


def _read_parquet_v1(path: str, **kwargs):
    """`ray.data.read_parquet` through Ray Data's first Parquet reader. The second (Ray 2.60's
    default) starts 32 FooterReader actors, each a new Python process, for every execution of a
    read: the statistics pass, each epoch's train and validation passes, the test pass. On 2 cores
    a 1M-row, 1-epoch run started 34 of them (bench/RESULTS.md); the first reader starts none."""
    import ray.data

    ctx = ray.data.DataContext.get_current()  # read when the read is planned, i.e. here
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    block, ctx.target_max_block_size = ctx.target_max_block_size, READ_BLOCK_BYTES  # copied into the dataset's context
    try:
        return ray.data.read_parquet(path, **kwargs)
    finally:
        ctx.use_datasource_v2, ctx.target_max_block_size = v2, block


def _check_columns(spec: DataSpec, schema: pa.Schema) -> tuple[list[str], str]:
    """`data.prepare`'s column checks, from the schema alone."""
    names, label = schema.names, spec.label
    if label is None:
        raise DataError("data.label: no label column given; name the label column of your data")
    if label not in names:
        raise DataError(f"data.label: column {label!r} not in the data; columns: {names}")
    if spec.id_column is not None and spec.id_column not in names:
        raise DataError(f"data.id_column: column {spec.id_column!r} not in the data; columns: {names}")
    features = spec.features or [c for c in names if c not in (label, spec.id_column)]
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
    if not label_type_ok(t):
        raise DataError(f"data.label: the label column has type {t}; a label must be an integer, "
                        "float, bool or string (categorical) column")
    return list(features), label
