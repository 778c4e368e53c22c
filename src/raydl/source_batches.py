"""What runs on each batch of a streamed source (inside Ray Data's map tasks): decoding a batch
into numpy, one batch's mergeable statistics (`Partial`, merged on the driver by `raydl.source`),
and the model-ready or raw rows of one split. Small, picklable callables: they ship to every task.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from raydl import split
from raydl.columns import MAX_CLASSES, id_values
from raydl.drift.partial import ProfilePartial, ProfilePass
from raydl.drift.profile import ProfileSettings
from raydl.errors import DataError

if TYPE_CHECKING:
    from raydl.source import SourceStats

PATH = "path"  # the column Ray Data adds with include_paths=True
PROFILE = ProfileSettings()  # how the drift reference profile written with a model is built


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations per column; merged with Chan's formula."""

    n: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        if len(x) == 0:
            return cls(0, np.zeros(x.shape[1]), np.zeros(x.shape[1]))
        mean = x.mean(axis=0)
        return cls(len(x), mean, ((x - mean) ** 2).sum(axis=0))

    def merge(self, other: Moments) -> Moments:
        n = self.n + other.n
        if n == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        return Moments(n, mean, self.m2 + other.m2 + delta**2 * (self.n * other.n / n))


@dataclass(frozen=True)
class Partial:
    """One batch's (or many merged batches') contribution to `Source.stats`."""

    rows: np.ndarray  # [3] rows per split
    key_sum: int
    moments: Moments  # train rows: every feature, then the label (0 when not numeric)
    vmin: np.ndarray  # [F] over all rows
    vmax: np.ndarray
    values: frozenset  # distinct label values, at most MAX_CLASSES + 1 kept
    integral: bool  # every finite label value is a whole number
    profile: ProfilePartial  # the drift profile's first pass over the train rows (raw units)
    problems: dict = field(default_factory=dict)  # (kind, column) -> (rows, first file)

    @classmethod
    def empty(cls, features: list[str], profile: ProfilePass) -> Partial:
        n = len(features)
        return cls(np.zeros(3, np.int64), 0, Moments.of(np.zeros((0, n + 1))), np.full(n, np.inf),
                   np.full(n, -np.inf), frozenset(), True, profile(raw_table(np.zeros((0, n)), features)))

    def merge(self, other: Partial) -> Partial:
        problems = dict(self.problems)
        for k, (n, first) in other.problems.items():
            problems[k] = (problems[k][0] + n, problems[k][1]) if k in problems else (n, first)
        return Partial(self.rows + other.rows, (self.key_sum + other.key_sum) % 2**64,
                        self.moments.merge(other.moments), np.minimum(self.vmin, other.vmin),
                        np.maximum(self.vmax, other.vmax), capped(self.values | other.values),
                        self.integral and other.integral,
                        self.profile.merge(other.profile, PROFILE.sample_size), problems)


def raw_table(X: np.ndarray, features: list[str]) -> pa.Table:
    return pa.table({f: X[:, j] for j, f in enumerate(features)})


def capped(values) -> frozenset:
    return frozenset(sorted(values)[: MAX_CLASSES + 1])


@dataclass(frozen=True)
class Batch:
    """A batch decoded into numpy: float64 features (NaN for missing), label values, files."""

    X: np.ndarray
    label: np.ndarray  # nulls filled (NaN for floats, 0, False or "" for the rest)
    label_null: np.ndarray  # bool
    label_numeric: bool
    paths: np.ndarray | None
    ids: np.ndarray | None = None  # a declared id column's values: the split follows them

    def keys(self) -> np.ndarray:
        """Each row's split key: its declared id, else its content (`raydl.split`)."""
        return split.id_keys(self.ids) if self.ids is not None else split.row_keys(self.X, self.label)

    def first_path(self, mask: np.ndarray, fallback: str) -> str:
        return str(self.paths[int(np.argmax(mask))]) if self.paths is not None else fallback


def decode(batch: pa.Table, features: list[str], label: str, id_column: str | None = None) -> Batch:
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
    ids = id_values(batch.column(id_column)) if id_column else None
    return Batch(X, values, null, numeric, paths, ids)




@dataclass(frozen=True)
class Columns:
    """What the per-batch functions need (small, so it ships cheaply to every task)."""

    features: list[str]
    label: str
    source: str  # named in messages when the rows do not carry their file
    id_column: str | None = None

    def decode(self, batch: pa.Table) -> Batch:
        return decode(batch, self.features, self.label, self.id_column)


class StatsPass:
    """map_batches function: one pickled `Partial` per batch."""

    def __init__(self, cols: Columns, seed: int, fractions: tuple, want_values: bool, profile: ProfilePass) -> None:
        self.cols, self.seed, self.fractions, self.want_values = cols, seed, fractions, want_values
        self.profile = profile

    def __call__(self, batch: pa.Table) -> pa.Table:
        partial = (self.partial(self.cols.decode(batch)) if batch.num_rows
                   else Partial.empty(self.cols.features, self.profile))
        return pa.table({"state": pa.array([pickle.dumps(partial)], pa.binary())})

    def partial(self, b: Batch) -> Partial:
        keys = b.keys()
        part = split.assign(keys, self.seed, self.fractions)
        y = b.label.astype(np.float64) if b.label_numeric else np.zeros(len(b.label))
        ok = ~b.label_null & np.isfinite(y)
        values = capped(np.unique(b.label[ok]).tolist()) if self.want_values else frozenset()
        train = part == 0
        return Partial(np.bincount(part, minlength=3).astype(np.int64), split.key_sum(keys),
                        Moments.of(np.column_stack([b.X[train], y[train]])),
                        b.X.min(axis=0), b.X.max(axis=0), values, bool(np.all(y[ok] == np.round(y[ok]))),
                        self.profile(raw_table(b.X[train], self.cols.features)), self.problems(b, ok))

    def problems(self, b: Batch, label_ok: np.ndarray) -> dict:
        first = b.first_path
        bad = ~np.isfinite(b.X)
        found = {("value", self.cols.features[j]): (int(bad[:, j].sum()), first(bad[:, j], self.cols.source))
                 for j in np.flatnonzero(bad.any(axis=0))}
        nan = ~label_ok & ~b.label_null
        for kind, mask in (("null", b.label_null), ("nan", nan)):
            if mask.any():
                found[(kind, self.cols.label)] = (int(mask.sum()), first(mask, self.cols.source))
        return found


class RawRows:
    """map_batches function: the rows of one split, feature columns in their own units."""

    def __init__(self, cols: Columns, seed: int, fractions: tuple, part: int) -> None:
        self.cols, self.seed, self.fractions, self.part = cols, seed, fractions, part

    def __call__(self, batch: pa.Table) -> pa.Table:
        b = self.cols.decode(batch)
        keep = split.assign(b.keys(), self.seed, self.fractions) == self.part
        return raw_table(b.X[keep], self.cols.features)


class ModelReady:
    """map_batches function: the rows of one split as model input, x float32 [B, F] and y."""

    def __init__(self, cols: Columns, stats: SourceStats, seed: int, fractions: tuple, part: int) -> None:
        # the numbers only, not `stats`: unpickling a `SourceStats` in a map task would import raydl.source (torch)
        self.cols, self.seed, self.fractions, self.part = cols, seed, fractions, part
        self.mean, self.std = np.asarray(stats.mean), np.asarray(stats.std)
        self.class_ids = {c: i for i, c in enumerate(stats.classes)}
        self.regression = stats.task == "regression"
        self.target_mean, self.target_std = stats.target_mean, stats.target_std

    def __call__(self, batch: pa.Table) -> dict:
        b = self.cols.decode(batch)
        keep = split.assign(b.keys(), self.seed, self.fractions) == self.part
        x = ((b.X[keep] - self.mean) / self.std).astype(np.float32)
        return {"x": x, "y": self.targets(b.label[keep])}

    def targets(self, values: np.ndarray) -> np.ndarray:
        if self.regression:
            y = (values.astype(np.float64) - self.target_mean) / self.target_std
            return y.astype(np.float32)
        uniq, inverse = np.unique(values, return_inverse=True)
        unseen = [v for v in uniq.tolist() if v not in self.class_ids]
        if unseen:
            raise DataError(f"data.label: value(s) {unseen[:5]} were not in the data when the classes were counted")
        ids = np.array([self.class_ids[v] for v in uniq.tolist()], dtype=np.int64)
        return ids[inverse.reshape(-1)]
