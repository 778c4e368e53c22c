"""Experience streams: the datasets a continual run learns one after the other.

A scenario is a registered name whose builder returns the stream's experiences as tables of
numeric feature columns and a label. The built-ins ship offline (scikit-learn's digits, pixels
scaled to [0, 1]): class-incremental Split-Digits (each experience a disjoint set of classes),
task-incremental Split-Digits (the same, with a `task` column holding the experience's id, read by
the `multihead_mlp` model; its classes always in order, as the heads expect), domain-incremental Permuted-Digits (a fixed, seeded pixel permutation
per experience) and Rotated-Digits (a rotation per experience). Scenario `sources` reads one
Parquet/CSV file or partitioned directory per experience; every experience must have the same
feature columns and label.

Each experience's rows are cut into a train pool and a held-out test set by their content hashed
with the data seed (`raydl.split`), at `data.split.test`; the accuracy matrix is scored on those
test sets, and the train pool goes to an ordinary raydl training run (which splits it into train
and val with the same hash, so the rows are those a plain `raydl train` would use).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from raydl.data import feature_matrix
from raydl.datasets import read_table
from raydl.errors import DataError, SpecError
from raydl.registry import Registry
from raydl.spec import JobSpec, StreamSpec
from raydl.split import assign, row_keys

LABEL = "digit"
TASK = "task"  # task-incremental scenarios: the experience id, a feature column
PIXELS = [f"pixel_{i}" for i in range(64)]


@dataclass(frozen=True)
class Experience:
    index: int  # 0-based
    name: str
    pool: pa.Table  # the rows a run trains (and validates) on
    test: pa.Table  # held out: the accuracy matrix's column for this experience


@dataclass(frozen=True)
class Stream:
    experiences: list[Experience]
    features: list[str]
    label: str
    classes: list  # every class of the stream, in order (the model's outputs)

    def __len__(self) -> int:
        return len(self.experiences)


@dataclass(frozen=True)
class Scenario:
    build: Callable[[StreamSpec, int], list[tuple[str, pa.Table]]]  # (spec, experiences) -> (name, table) each
    experiences: int  # the default count
    doc: str


SCENARIOS: Registry[Scenario] = Registry("stream scenario")


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from raydl.datasets.bundled import load_digits

    X, y = load_digits()
    return X / 16.0, y


def _table(X: np.ndarray, y: np.ndarray, task: int | None = None) -> pa.Table:
    cols = {n: X[:, i] for i, n in enumerate(PIXELS)}
    if task is not None:
        cols[TASK] = np.full(len(y), float(task))
    cols[LABEL] = y
    return pa.table(cols)


def class_groups(n: int, seed: int) -> list[list[int]]:
    """The 10 digit classes in `n` equal groups: in order for seed 0, else in a seeded order."""
    if 10 % n:
        raise SpecError(f"stream.experiences: {n} does not divide the 10 digit classes; use 2, 5 or 10")
    order = np.arange(10) if seed == 0 else np.random.default_rng(seed).permutation(10)
    return [sorted(order[i : i + 10 // n].tolist()) for i in range(0, 10, 10 // n)]


def _split(s: StreamSpec, n: int, tasks: bool) -> list[tuple[str, pa.Table]]:
    X, y = _digits()
    out = []
    for t, group in enumerate(class_groups(n, 0 if tasks else s.seed)):  # task t's head scores classes t*k..
        rows = np.isin(y, group)
        out.append((f"classes {','.join(map(str, group))}", _table(X[rows], y[rows], t if tasks else None)))
    return out


def _permuted(s: StreamSpec, n: int) -> list[tuple[str, pa.Table]]:
    X, y = _digits()
    return [(f"permutation {i + 1}", _table(X[:, np.random.default_rng([s.seed, i]).permutation(64)], y)) for i in range(n)]


def rotation_angles(n: int, seed: int) -> list[float]:
    """Evenly spaced angles in [0, 180) degrees, the first 0; a seed > 0 shuffles their order."""
    angles = [180.0 * i / n for i in range(n)]
    return angles if seed == 0 else [angles[i] for i in np.random.default_rng(seed).permutation(n)]


def _rotated(s: StreamSpec, n: int) -> list[tuple[str, pa.Table]]:
    from scipy.ndimage import rotate

    X, y = _digits()
    out = []
    for a in rotation_angles(n, s.seed):
        images = rotate(X.reshape(-1, 8, 8), a, axes=(2, 1), reshape=False, order=1, mode="constant")
        out.append((f"rotated {a:g} deg", _table(np.clip(images, 0, 1).reshape(-1, 64), y)))
    return out


SCENARIOS.register("split_digits")(Scenario(lambda s, n: _split(s, n, False), 5, "class-incremental: 2 digit classes per experience"))
SCENARIOS.register("split_digits_tasks")(Scenario(lambda s, n: _split(s, n, True), 5, "task-incremental: as split_digits, with a task id column"))
SCENARIOS.register("permuted_digits")(Scenario(_permuted, 5, "domain-incremental: a seeded pixel permutation per experience"))
SCENARIOS.register("rotated_digits")(Scenario(_rotated, 5, "domain-incremental: a rotation per experience"))


def _sources(s: StreamSpec, label: str | None) -> list[tuple[str, pa.Table]]:
    if len(s.sources) < 1:
        raise SpecError("stream.sources: scenario 'sources' needs one path per experience (Parquet/CSV file or directory)")
    if label is None:
        raise SpecError("data.label: a stream of sources needs the label column named (data.label)")
    return [(src, read_table(src, where=f"stream.sources[{i}]")) for i, src in enumerate(s.sources)]


def check_columns(tables: list[tuple[str, pa.Table]], label: str, features: list[str] | None) -> list[str]:
    """The stream's feature columns: those every experience shares with the first, which must be all
    of each one's (a stream whose experiences differ in their columns is refused, with one line)."""
    first = tables[0][1]
    if label not in first.column_names:
        raise DataError(f"stream: experience 1 ({tables[0][0]}) has no label column {label!r}; columns: {first.column_names}")
    want = features or [c for c in first.column_names if c != label]
    for i, (name, t) in enumerate(tables):
        have = [c for c in t.column_names if c != label] if features is None else [c for c in features if c in t.column_names]
        missing, extra = [c for c in want if c not in have], [c for c in have if c not in want]
        if missing or extra or label not in t.column_names:
            what = "; ".join(x for x in (f"missing {missing[:5]}" if missing else "", f"extra {extra[:5]}" if extra else "",
                                         f"no label column {label!r}" if label not in t.column_names else "") if x)
            raise DataError(f"stream: experience {i + 1} ({name}) has other feature columns than experience 1: {what}; "
                            "every experience of a stream must have the same feature columns and label")
        feature_matrix(t, want, where=f"stream experience {i + 1}")  # numeric, finite
    return want


def holdout(table: pa.Table, features: list[str], label: str, test: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """(pool, test): the rows whose content hashed with `seed` falls in the last `test` fraction are held out."""
    X = feature_matrix(table, features)
    part = assign(row_keys(X, table.column(label).to_numpy(zero_copy_only=False)), seed, (1.0 - test, test, 0.0))
    return table.filter(pa.array(part == 0)), table.filter(pa.array(part == 1))


def build_stream(spec: JobSpec) -> Stream:
    """The experiences of `spec.stream` (default: split_digits), each cut into a train pool and a test set."""
    s = spec.stream or StreamSpec()
    test = spec.data.split.test
    if test <= 0:
        raise SpecError("data.split.test: a stream holds out a test set per experience; give a fraction > 0 (e.g. 0.2)")
    if s.scenario == "sources":
        label = spec.data.label
        tables = _sources(s, label)
    else:
        sc = SCENARIOS.get(s.scenario, "stream.scenario")
        label = LABEL
        if spec.data.label not in (None, LABEL):
            raise SpecError(f"data.label: the {s.scenario} scenario's label column is {LABEL!r}, not {spec.data.label!r}")
        tables = sc.build(s, s.experiences or sc.experiences)
    features = check_columns(tables, label, spec.data.features)
    experiences = []
    for i, (name, t) in enumerate(tables):
        pool, held = holdout(t, features, label, test, spec.data.seed)
        if pool.num_rows < 2 or held.num_rows == 0:
            raise DataError(f"stream: experience {i + 1} ({name}) has {t.num_rows} row(s): too few for a train pool and a test set")
        experiences.append(Experience(i, name, pool, held))
    classes = spec.data.classes or sorted({v for _, t in tables for v in t.column(label).to_pylist()})
    return Stream(experiences, features, label, list(classes))
