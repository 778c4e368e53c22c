"""Where rows come from: built-in datasets that ship offline, and Parquet/CSV files by path or URI.

Every loader returns a `pyarrow.Table`; the built-ins also name their label, task and image shape.
Adding a dataset is one `@DATASETS.register(name)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from raydl.errors import DataError
from raydl.registry import Registry
from raydl.spec import DataSpec


@dataclass(frozen=True)
class Builtin:
    load: Callable[[DataSpec], pa.Table]
    label: str
    task: str
    image_shape: tuple[int, ...] | None = None


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
    from sklearn.datasets import load_digits

    d = load_digits()
    return _table(d.data.astype(np.float64), d.target, [f"pixel_{i}" for i in range(64)], "digit")


DATASETS.register("digits")(Builtin(_digits, "digit", "classification"))
DATASETS.register("digits_images")(Builtin(_digits, "digit", "classification", (1, 8, 8)))
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
    kind = _format_of(source, fmt)
    try:
        return pds.dataset(source, format=kind).to_table()
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, FileNotFoundError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{where}: cannot read {source!r} as {kind}: {first}") from None


def load_source(spec: DataSpec) -> tuple[pa.Table, Builtin | None]:
    if spec.source in DATASETS:
        builtin = DATASETS.get(spec.source)
        return builtin.load(spec), builtin
    return read_table(spec.source, spec.format), None
