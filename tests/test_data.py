"""Data preparation: sources, the seeded split, standardisation on train only, clear errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from raydl.data import prepare, split_indices
from raydl.datasets import DATASETS
from raydl.errors import DataError
from raydl.spec import DataSpec


def test_split_is_seeded_disjoint_covers_everything_and_follows_the_rows():
    X = np.random.default_rng(0).normal(size=(10_000, 3))
    y = np.arange(10_000) % 2
    a = split_indices(X, y, (0.6, 0.2, 0.2), seed=5)
    b = split_indices(X, y, (0.6, 0.2, 0.2), seed=5)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert [abs(len(u) / 10_000 - f) < 0.015 for u, f in zip(a, (0.6, 0.2, 0.2))] == [True] * 3
    assert sorted(np.concatenate(a).tolist()) == list(range(10_000))
    assert not np.array_equal(a[0], split_indices(X, y, (0.6, 0.2, 0.2), seed=6)[0])
    order = np.random.default_rng(1).permutation(10_000)  # shuffled rows keep their split
    c = split_indices(X[order], y[order], (0.6, 0.2, 0.2), seed=5)
    assert all(np.array_equal(np.sort(order[u]), v) for u, v in zip(c, a))


def test_standardisation_is_fitted_on_train_only():
    p = prepare(DataSpec(source="wine"))
    assert np.allclose(p.train.X.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(p.train.X.std(axis=0), 1, atol=1e-3)
    assert not np.allclose(p.val.X.mean(axis=0), 0, atol=1e-3)
    assert p.prep.task == "classification" and len(p.prep.classes) == 3


@pytest.mark.parametrize("name", DATASETS.names())
def test_builtins_load_offline(name):
    p = prepare(DataSpec(source=name))
    assert len(p.train) + len(p.val) + len(p.test) >= 34  # the karate club: 34 members; the rest: hundreds
    # token sequences and graph nodes are integer ids; features are float32
    assert p.train.X.dtype in (np.float32, np.int64)
    assert p.prep.kind not in ("tabular", "image") or p.train.X.dtype == np.float32
    assert np.isfinite(p.train.X).all()


def test_xor_labels_follow_the_sign_rule():
    table = DATASETS.get("xor").load(DataSpec(source="xor", n_samples=500))
    x1, x2, y = (table.column(c).to_numpy() for c in ("x1", "x2", "label"))
    assert np.array_equal(y, (x1 * x2 > 0).astype(int))


def test_parquet_and_csv_files_and_directories(tmp_path):
    rng = np.random.default_rng(0)
    t = pa.table({"a": rng.normal(size=200), "b": rng.integers(0, 5, 200), "y": rng.normal(size=200)})
    pq.write_table(t, tmp_path / "d.parquet")
    (tmp_path / "dir").mkdir()
    pq.write_table(t.slice(0, 100), tmp_path / "dir" / "p0.parquet")
    pq.write_table(t.slice(100), tmp_path / "dir" / "p1.parquet")
    pcsv.write_csv(t, tmp_path / "d.csv")
    sizes = set()
    for src in ("d.parquet", "dir", "d.csv"):
        p = prepare(DataSpec(source=str(tmp_path / src), label="y"))
        assert p.prep.task == "regression" and p.prep.features == ["a", "b"]
        sizes.add(len(p.train))
    assert len(sizes) == 1 and abs(sizes.pop() - 120) <= 12  # the same rows from every layout, ~60%


def test_string_labels_become_classes(tmp_path):
    t = pa.table({"f": np.arange(50.0), "kind": ["cat", "dog"] * 25})
    pq.write_table(t, tmp_path / "s.parquet")
    p = prepare(DataSpec(source=str(tmp_path / "s.parquet"), label="kind"))
    assert p.prep.classes == ["cat", "dog"] and p.train.y.dtype == np.int64


@pytest.mark.parametrize(
    "table, label, match",
    [
        (pa.table({"f": [1.0, np.nan, 2.0] * 10, "y": [0, 1, 0] * 10}), "y", "NaN"),
        (pa.table({"f": [1.0, np.inf, 2.0] * 10, "y": [0, 1, 0] * 10}), "y", "infinite"),
        (pa.table({"f": ["a", "b", "c"] * 10, "y": [0, 1, 0] * 10}), "y", "must be numeric"),
        (pa.table({"f": [1.0, 2.0] * 10, "y": [0, 1] * 10}), "target", "not in the data"),
        (pa.table({"f": pa.array([], pa.float64()), "y": pa.array([], pa.int64())}), "y", "no rows"),
    ],
)
def test_bad_data_is_one_clear_error(tmp_path, table, label, match):
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=match):
        prepare(DataSpec(source=str(tmp_path / "bad.parquet"), label=label))


def test_missing_path_names_the_builtins():
    with pytest.raises(DataError, match="no file or directory at .*built-in dataset: .*digits"):
        prepare(DataSpec(source="/no/such/file.parquet"))


def test_fewer_rows_than_workers():
    with pytest.raises(DataError, match="fewer than the 64 worker"):
        prepare(DataSpec(source="xor", n_samples=50), min_train_rows=64)


def _with_ids(n: int = 400, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"rid": [f"r{i}" for i in range(n)], "a": rng.normal(size=n), "b": rng.normal(size=n),
                     "y": rng.integers(0, 2, n)})


def test_a_declared_id_column_decides_the_split(tmp_path):
    t = _with_ids()
    pq.write_table(t, tmp_path / "a.parquet")
    # the same ids with other values (a re-measured or corrected dataset) in another order
    order = np.random.default_rng(1).permutation(t.num_rows)
    changed = t.take(order).set_column(1, "a", pa.array(np.random.default_rng(9).normal(size=t.num_rows)))
    pq.write_table(changed, tmp_path / "b.parquet")
    p = prepare(DataSpec(source=str(tmp_path / "a.parquet"), label="y", id_column="rid"))
    q = prepare(DataSpec(source=str(tmp_path / "b.parquet"), label="y", id_column="rid"))
    assert p.prep.features == ["a", "b"]  # the id is not a feature
    # column b is unchanged: the same ids in validation give the same standardised b values
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(np.sort(getattr(p, part).X[:, 1]), np.sort(getattr(q, part).X[:, 1]))
    assert not np.array_equal(np.sort(p.val.X[:, 0]), np.sort(q.val.X[:, 0]))  # a did change
    with pytest.raises(DataError, match=r"data.id_column: column 'nope' not in the data"):
        prepare(DataSpec(source=str(tmp_path / "a.parquet"), label="y", id_column="nope"))


def test_declared_classes_fix_the_class_set(tmp_path):
    t = _with_ids()
    pq.write_table(t, tmp_path / "a.parquet")
    p = prepare(DataSpec(source=str(tmp_path / "a.parquet"), label="y", id_column="rid", classes=[0, 1, 2, 3]))
    assert p.prep.classes == [0, 1, 2, 3] and p.prep.task == "classification"
    with pytest.raises(DataError, match=r"data.label: value\(s\) \[1\] are not among data.classes \[0, 2\]"):
        prepare(DataSpec(source=str(tmp_path / "a.parquet"), label="y", id_column="rid", classes=[0, 2]))


def test_digits_are_sklearns_digits_read_without_importing_sklearn():
    """raydl reads the digits file scikit-learn ships (about 20 ms) instead of importing scikit-learn
    (about 1 s before Ray starts): the same pixels, digits and dtypes as `load_digits()`."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits as sklearn_digits

    from raydl.datasets.bundled import load_digits

    X, y = load_digits()
    d = sklearn_digits()
    assert X.dtype == np.float64 and y.dtype == np.int64
    np.testing.assert_array_equal(X, d.data)
    np.testing.assert_array_equal(y, d.target)
    table = DATASETS.get("digits", "data.source").load(DataSpec(source="digits"))
    np.testing.assert_array_equal(table.column("pixel_63").to_numpy(), d.data[:, 63])
    np.testing.assert_array_equal(table.column("digit").to_numpy(), d.target)
    probe = ("import sys; from raydl.datasets import DATASETS; from raydl.spec import DataSpec; "
             "DATASETS.get('digits', 'data.source').load(DataSpec(source='digits')); print('sklearn' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"
