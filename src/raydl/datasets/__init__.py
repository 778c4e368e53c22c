"""Where rows come from: built-in datasets that ship offline, and Parquet/CSV files by path or URI.

A built-in's loader returns a `pyarrow.Table` of numeric feature columns and a label (tabular
data, and images stored as flat pixels), or `Arrays` for data that is not a flat table (sequences,
masks, boxes, graphs): named columns with a leading row axis. Each built-in also names its label,
task and data kind (with the kind's sample shape). Adding a dataset is one `DATASETS.register`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from raydl.errors import DataError
from raydl.registry import Registry
from raydl.spec import DataSpec


@dataclass(frozen=True)
class Arrays:
    """A dataset as named columns with a leading row axis: "x" (the model input), "y" (the target,
    any shape the task reads) and whatever else the data kind's collate reads (e.g. "length").
    `classes` fixes the class labels of a classification target (index = class id) when the
    target's values alone do not tell them (e.g. masks); `params` go to the data kind (e.g. a
    vocabulary size)."""

    cols: dict[str, np.ndarray]
    classes: list | None = None
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.cols["x"])


@dataclass(frozen=True)
class Builtin:
    load: Callable[[DataSpec], pa.Table | Arrays]
    label: str
    task: str
    kind: str = "tabular"  # the data kind its rows are (raydl.batches.DATA_KINDS)
    shape: tuple[int, ...] | None = None  # one sample's input shape, when not (features,)


DATASETS: Registry[Builtin] = Registry("dataset")


def _table(X: np.ndarray, y: np.ndarray, names: list[str], label: str) -> pa.Table:
    cols = {n.replace(" ", "_"): X[:, i] for i, n in enumerate(names)}
    cols[label] = y
    return pa.table(cols)


def _sklearn(loader_name: str, label: str) -> Callable[[DataSpec], pa.Table]:
    def load(spec: DataSpec) -> pa.Table:
        import sklearn.datasets as skd

        bunch = getattr(skd, loader_name)()
        names = [str(n) for n in bunch.feature_names]
        return _table(bunch.data.astype(np.float64), bunch.target, names, label)

    return load


def _digits(spec: DataSpec) -> pa.Table:
    from raydl.datasets.bundled import load_digits

    X, y = load_digits()
    return _table(X, y, [f"pixel_{i}" for i in range(64)], "digit")


DATASETS.register("digits")(Builtin(_digits, "digit", "classification"))
DATASETS.register("digits_images")(Builtin(_digits, "digit", "classification", "image", (1, 8, 8)))
DATASETS.register("breast_cancer")(Builtin(_sklearn("load_breast_cancer", "benign"), "benign", "classification"))
DATASETS.register("wine")(Builtin(_sklearn("load_wine", "cultivar"), "cultivar", "classification"))
DATASETS.register("iris")(Builtin(_sklearn("load_iris", "species"), "species", "classification"))
DATASETS.register("diabetes")(Builtin(_sklearn("load_diabetes", "progression"), "progression", "regression"))


def _xor(spec: DataSpec) -> pa.Table:
    rng = np.random.default_rng(spec.seed)
    n = spec.n_samples or 2000
    X = rng.uniform(-1.0, 1.0, size=(n, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)  # 1 when x1 and x2 share a sign
    X = X + rng.normal(0.0, spec.noise or 0.0, size=X.shape)
    return _table(X, y, ["x1", "x2"], "label")


def _moons(spec: DataSpec) -> pa.Table:
    from sklearn.datasets import make_moons

    X, y = make_moons(spec.n_samples or 2000, noise=0.2 if spec.noise is None else spec.noise, random_state=spec.seed)
    return _table(X, y, ["x1", "x2"], "label")


def _blobs(spec: DataSpec) -> pa.Table:
    from sklearn.datasets import make_blobs

    X, y = make_blobs(spec.n_samples or 2000, centers=3, n_features=2, cluster_std=1.0 + (spec.noise or 0.0), random_state=spec.seed)
    return _table(X, y, ["x1", "x2"], "label")


DATASETS.register("xor")(Builtin(_xor, "label", "classification"))
DATASETS.register("moons")(Builtin(_moons, "label", "classification"))
DATASETS.register("blobs")(Builtin(_blobs, "label", "classification"))


def _is_uri(source: str) -> bool:
    return "://" in source


def _format_of(source: str, declared: str) -> str:
    if declared != "auto":
        return declared
    suffix = Path(source.rstrip("/")).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if not _is_uri(source) and Path(source).is_dir():
        kinds = {p.suffix.lower() for p in Path(source).rglob("*") if p.is_file()}
        if kinds & {".csv"} and not kinds & {".parquet", ".pq"}:
            return "csv"
    return "parquet"


def read_table(source: str, fmt: str = "auto", where: str = "data.source") -> pa.Table:
    """Read a Parquet/CSV file or directory (local path or any pyarrow filesystem URI)."""
    import pyarrow.dataset as pds

    if not _is_uri(source) and not Path(source).exists():
        raise DataError(
            f"{where}: no file or directory at {source!r} (and it is not a built-in dataset: {', '.join(DATASETS.names())})"
        )
    from raydl import storage

    kind = _format_of(source, fmt)
    try:
        fs, path = storage.filesystem(source)  # an s3:// endpoint from the environment, short timeouts
        return pds.dataset(path, format=kind, filesystem=fs).to_table()
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, FileNotFoundError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{where}: cannot read {source!r} as {kind}: {first}") from None


def load_source(spec: DataSpec) -> tuple[pa.Table | Arrays, Builtin | None]:
    if spec.source in DATASETS:
        builtin = DATASETS.get(spec.source)
        return builtin.load(spec), builtin
    return read_table(spec.source, spec.format), None


# Families of built-in datasets beyond the tables above live in modules of this package and
# register themselves when imported here (one line each).
from raydl.datasets import digits_tasks, graphs, sequences, shapes  # noqa: E402,F401  (digits cut for metric/few-shot/transfer/multi-task; graphs, sequences; synthetic shapes with masks/boxes, imbalanced digits)
