"""The content-hash split and the lazy Ray Data source, on real files and a real embedded Ray."""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from raydl import split
from raydl.data import feature_matrix
from raydl.errors import DataError
from raydl.source import open_source
from raydl.spec import DataSpec

SEED = 3
FRACTIONS = (0.6, 0.2, 0.2)
FEATURES = ["f0", "f1", "f2", "f3"]


@pytest.fixture(scope="module", autouse=True)
def quiet_ray(ray_local):
    """No progress bars."""
    ctx = ray_local.data.DataContext.get_current()
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False


def make_table(n: int = 3000, seed: int = 0) -> pa.Table:
    """Values exact in float32 and in CSV text (multiples of 1/8), with 40 duplicated rows."""
    rng = np.random.default_rng(seed)
    f = rng.integers(-800, 800, size=(n, 2)) / 8
    t = pa.table({"f0": f[:, 0], "f1": f[:, 1], "f2": rng.integers(-5, 5, n),
                  "f3": rng.random(n) < 0.3, "y": rng.integers(0, 4, n).astype(np.float64)})
    return pa.concat_tables([t, t.slice(0, 40)])


def write_parquet(table: pa.Table, d, n_files: int, seed: int = 1):
    """The rows shuffled and cut into `n_files` files: a different order and layout each time."""
    d.mkdir()
    table = table.take(np.random.default_rng(seed).permutation(table.num_rows))
    for i, idx in enumerate(np.array_split(np.arange(table.num_rows), n_files)):
        pq.write_table(table.take(idx), d / f"part-{i}.parquet")
    return d


def write_csv(table: pa.Table, d, n_files: int = 3):
    d.mkdir()
    table = table.take(np.random.default_rng(2).permutation(table.num_rows))
    for i, idx in enumerate(np.array_split(np.arange(table.num_rows), n_files)):
        pcsv.write_csv(table.take(idx), d / f"part-{i}.csv")
    return d


def in_memory_split(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the in-memory path computes: the feature matrix, row keys and the split."""
    X = feature_matrix(table, FEATURES)
    keys = split.row_keys(X, table.column("y").to_numpy())
    return X, keys, split.assign(keys, SEED, FRACTIONS)


@pytest.fixture(scope="module")
def table():
    return make_table()


@pytest.fixture(scope="module")
def sources(table, tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return {"one": str(write_parquet(table, root / "one", 1)),
            "seven": str(write_parquet(table, root / "seven", 7, seed=5)),
            "csv": str(write_csv(table, root / "csv"))}


@pytest.fixture(scope="module")
def one_stats(sources):
    return open_source(DataSpec(source=sources["one"], label="y")).stats(SEED, FRACTIONS)


def collect(src, stats) -> dict[str, np.ndarray]:
    """All three split datasets in one execution, each row tagged with its split."""
    def tag(i):
        return lambda b: {**b, "split": np.full(len(b["y"]), i, np.int8)}

    parts = [ds.map_batches(tag(i), batch_format="numpy") for i, ds in
             enumerate(src.split_datasets(stats, SEED, FRACTIONS).values())]
    batches = list(parts[0].union(*parts[1:]).iter_batches(batch_format="numpy", batch_size=None))
    return {k: np.concatenate([b[k] for b in batches]) for k in ("x", "y", "split")}


# -- the split, pure numpy ---------------------------------------------------------------

def test_same_keys_same_assignment_and_seed_changes_it():
    X = np.random.default_rng(0).normal(size=(100_000, 8))
    keys = split.row_keys(X, np.zeros(len(X)))
    a = split.assign(keys, 7, FRACTIONS)
    assert np.array_equal(a, split.assign(keys.copy(), 7, FRACTIONS))
    assert np.array_equal(split.row_keys(X[::-1], np.zeros(len(X)))[::-1], keys)  # not row order
    assert (a != split.assign(keys, 8, FRACTIONS)).mean() > 0.4


def test_fractions_are_respected_on_100k_rows():
    keys = split.row_keys(np.random.default_rng(1).normal(size=(100_000, 4)), np.arange(100_000))
    for fractions in [(0.6, 0.2, 0.2), (0.8, 0.1, 0.1), (0.7, 0.3, 0.0)]:
        share = np.bincount(split.assign(keys, 0, fractions), minlength=3) / len(keys)
        assert np.allclose(share, fractions, atol=0.01), (fractions, share)


def test_keys_depend_on_values_not_on_dtype_or_sign_of_zero():
    X = np.array([[0.0, 1.0], [-0.0, 1.0], [0.0, 2.0], [1.0, 0.0]])
    k = split.row_keys(X, np.array([1, 1, 1, 1]))
    assert k[0] == k[1] and len(set(k[[0, 2, 3]].tolist())) == 3
    assert np.array_equal(k, split.row_keys(X.astype(np.float32), np.array([1.0, 1.0, 1.0, 1.0])))
    by_label = split.row_keys(X[:1].repeat(3, 0), np.array(["a", "b", "a"], dtype=object))
    assert by_label[0] == by_label[2] != by_label[1]
    assert len(set(split.id_keys(np.arange(1000)).tolist())) == 1000
    assert split.id_keys(np.array(["u1", "u2", "u1"]))[0] == split.id_keys(np.array(["u1"]))[0]


# -- one pass of stats -------------------------------------------------------------------

def test_stats_match_numpy_on_the_whole_table(table, one_stats):
    X, keys, part = in_memory_split(table)
    train = X[part == 0]
    assert (one_stats.n_train, one_stats.n_val, one_stats.n_test) == tuple(np.bincount(part, minlength=3))
    assert np.allclose(one_stats.mean, train.mean(axis=0), rtol=1e-9, atol=0)
    assert np.allclose(one_stats.std, train.std(axis=0), rtol=1e-9, atol=0)
    assert one_stats.task == "classification" and one_stats.classes == [0.0, 1.0, 2.0, 3.0]
    assert one_stats.fingerprint == split.fingerprint(split.key_sum(keys), len(keys), [*FEATURES, "y"])


def test_global_and_no_standardisation(table, sources):
    X, _, part = in_memory_split(table)
    src = open_source(DataSpec(source=sources["one"], label="y"))
    g = src.stats(SEED, FRACTIONS, standardize="global")
    assert np.allclose(g.mean, X[part == 0].mean(), rtol=1e-9) and np.allclose(g.std, X[part == 0].std(), rtol=1e-9)
    none = src.stats(SEED, FRACTIONS, standardize="none", task="regression")
    assert none.mean == [0.0] * 4 and none.std == [1.0] * 4
    assert (none.task, none.classes, none.target_mean, none.target_std) == ("regression", [], 0.0, 1.0)


def test_stats_identical_for_one_file_and_seven_files(sources, one_stats):
    seven = open_source(DataSpec(source=sources["seven"], label="y")).stats(SEED, FRACTIONS)
    assert (seven.n_train, seven.n_val, seven.n_test, seven.classes, seven.fingerprint) == (
        one_stats.n_train, one_stats.n_val, one_stats.n_test, one_stats.classes, one_stats.fingerprint)
    assert np.allclose(seven.mean, one_stats.mean, rtol=1e-12) and np.allclose(seven.std, one_stats.std, rtol=1e-12)


def test_regression_target_stats_and_inferred_task(tmp_path):
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(2000, 3)), rng.normal(50.0, 7.0, size=2000)
    t = pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "target": y})
    src = open_source(DataSpec(source=str(write_parquet(t, tmp_path / "r", 3)), label="target"))
    stats = src.stats(SEED, FRACTIONS, task="auto")
    train = split.assign(split.row_keys(X, y), SEED, FRACTIONS) == 0
    assert stats.task == "regression" and stats.classes == []
    assert np.isclose(stats.target_mean, y[train].mean(), rtol=1e-9)
    assert np.isclose(stats.target_std, y[train].std(), rtol=1e-9)
    ys = np.concatenate([b["y"] for b in src.split_datasets(stats, SEED, FRACTIONS)["train"]
                         .iter_batches(batch_format="numpy", batch_size=None)])
    assert ys.dtype == np.float32 and abs(ys.mean()) < 1e-4 and abs(ys.std() - 1) < 1e-4


# -- split datasets ----------------------------------------------------------------------

def test_shuffled_train_split_reads_its_files_in_a_new_order_each_epoch(sources):
    """Same rows every epoch, in another file order each execution; not shuffled: one order."""
    src = open_source(DataSpec(source=sources["seven"], label="y"))
    stats = src.stats(SEED, FRACTIONS)

    def epochs(shuffle: bool, n: int = 4) -> list[np.ndarray]:
        train = src.split_datasets(stats, SEED, FRACTIONS, shuffle=shuffle)["train"]
        train.context.execution_options.preserve_order = True  # the row order is then the file order
        return [np.concatenate([b["x"][:, 0] for b in train.iter_batches(batch_format="numpy", batch_size=None)])
                for _ in range(n)]

    shuffled = epochs(True)
    assert all(np.array_equal(np.sort(e), np.sort(shuffled[0])) for e in shuffled)
    assert len({e.tobytes() for e in shuffled}) > 1
    plain = epochs(False, 2)
    assert np.array_equal(plain[0], plain[1]) and np.array_equal(np.sort(plain[0]), np.sort(shuffled[0]))


def test_split_datasets_are_model_ready(table, sources, one_stats):
    X, _, part = in_memory_split(table)
    out = collect(open_source(DataSpec(source=sources["one"], label="y")), one_stats)
    assert len(out["y"]) == table.num_rows
    assert out["x"].dtype == np.float32 and out["x"].shape == (table.num_rows, 4)
    train = out["x"][out["split"] == 0]
    assert np.allclose(train.mean(axis=0), 0, atol=1e-5) and np.allclose(train.std(axis=0), 1, atol=1e-5)
    assert out["y"].dtype == np.int64
    raw = out["x"] * np.asarray(one_stats.std) + np.asarray(one_stats.mean)
    expected = np.asarray(one_stats.classes)[out["y"]]
    keys = split.row_keys(np.round(raw * 8) / 8, expected)  # values are multiples of 1/8
    _, want_keys, want_part = in_memory_split(table)
    for i in range(3):
        assert np.array_equal(np.sort(keys[out["split"] == i]), np.sort(want_keys[want_part == i]))


@pytest.mark.parametrize("layout", ["one", "seven", "csv"])
def test_same_membership_for_any_layout_and_the_in_memory_path(table, sources, one_stats, layout):
    src = open_source(DataSpec(source=sources[layout], label="y"))
    raw = dataclasses.replace(one_stats, mean=[0.0] * 4, std=[1.0] * 4)
    out = collect(src, raw)
    keys = split.row_keys(out["x"].astype(np.float64), np.asarray(raw.classes)[out["y"]])
    _, want_keys, want_part = in_memory_split(table)
    for i in range(3):  # multisets of row keys: the duplicated rows count twice
        assert np.array_equal(np.sort(keys[out["split"] == i]), np.sort(want_keys[want_part == i]))


# -- bad input ---------------------------------------------------------------------------

def bad(tmp_path, name: str, tables: list[pa.Table]) -> str:
    d = tmp_path / name
    d.mkdir()
    for i, t in enumerate(tables):
        pq.write_table(t, d / f"part-{i}.parquet")
    return str(d)


@pytest.mark.parametrize("spec, words", [
    ({"label": "nope"}, "data.label: column 'nope' not in the data"),
    ({"label": "y", "features": ["f0", "zz"]}, "data.features: column(s) ['zz'] not in the data"),
    ({"label": "y", "features": ["f0", "y"]}, "is also listed as a feature"),
    ({}, "data.label: no label column given"),
    ({"label": "y", "features": ["f0", "name"]}, "data.features: column 'name' has type string; features must be numeric"),
    ({"label": "when", "features": ["f0"]}, "data.label: the label column has type timestamp"),
])
def test_schema_problems_fail_at_open(tmp_path, spec, words):
    t = make_table(50).append_column("name", pa.array(["a"] * 90)).append_column(
        "when", pa.array(np.arange(90).astype("datetime64[s]")))
    with pytest.raises(DataError) as e:
        open_source(DataSpec(source=bad(tmp_path, "d", [t]), **spec))
    assert words in str(e.value)


def test_missing_source_and_unreadable_file(tmp_path):
    with pytest.raises(DataError, match="data.source: no file or directory at"):
        open_source(DataSpec(source=str(tmp_path / "absent.parquet"), label="y"))
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="data.source: cannot read .* as parquet"):
        open_source(DataSpec(source=str(tmp_path / "junk.parquet"), label="y"))


def test_nan_feature_names_the_column_and_the_file(tmp_path):
    good, broken = make_table(100, seed=1), make_table(100, seed=2).to_pandas()
    broken.loc[[3, 7], "f1"] = np.nan
    src = bad(tmp_path, "nan", [good, pa.Table.from_pandas(broken, preserve_index=False)])
    with pytest.raises(DataError) as e:
        open_source(DataSpec(source=src, label="y")).stats(SEED, FRACTIONS)
    assert "data.features: column 'f1' has 2 NaN, missing or infinite value(s)" in str(e.value)
    assert "part-1.parquet" in str(e.value) and "part-0" not in str(e.value)


def test_nan_and_missing_labels(tmp_path):
    y = pa.array([0.0, 1.0, np.nan, 1.0] * 25)
    t = make_table(60).slice(0, 100).set_column(4, "y", y)
    with pytest.raises(DataError, match=r"data.label: the label column has 25 NaN or infinite value\(s\)"):
        open_source(DataSpec(source=bad(tmp_path, "nan", [t]), label="y")).stats(SEED, FRACTIONS)
    t = t.set_column(4, "y", pa.array([0, 1, None, 1] * 25, pa.int64()))
    with pytest.raises(DataError, match=r"data.label: the label column has 25 missing value\(s\)"):
        open_source(DataSpec(source=bad(tmp_path, "null", [t]), label="y")).stats(SEED, FRACTIONS)


def test_empty_data_and_too_few_rows(tmp_path):
    empty = make_table(10).slice(0, 0)
    with pytest.raises(DataError, match="has no rows"):
        open_source(DataSpec(source=bad(tmp_path, "empty", [empty]), label="y")).stats(SEED, FRACTIONS)
    src = open_source(DataSpec(source=bad(tmp_path, "small", [make_table(60)]), label="y"))
    with pytest.raises(DataError, match=r"data: the train split has \d+ row\(s\), fewer than the 1000 worker\(s\)"):
        src.stats(SEED, FRACTIONS, min_train_rows=1000)


def test_empty_validation_split_and_single_class(tmp_path):
    t = make_table(20).slice(0, 3)
    keys = split.row_keys(feature_matrix(t, FEATURES), t.column("y").to_numpy())
    seed = next(s for s in range(1000) if 1 not in split.assign(keys, s, FRACTIONS))
    src = open_source(DataSpec(source=bad(tmp_path, "tiny", [t]), label="y"))
    with pytest.raises(DataError, match=r"data.split: the validation split is empty \(3 rows in all\)"):
        src.stats(seed, FRACTIONS, task="regression")
    one = make_table(200).set_column(4, "y", pa.array(np.ones(240)))
    with pytest.raises(DataError, match="classification needs at least 2 classes, found 1"):
        open_source(DataSpec(source=bad(tmp_path, "one", [one]), label="y")).stats(SEED, FRACTIONS)


def test_files_that_disagree_with_the_first_file(tmp_path):
    d = tmp_path / "csv"
    d.mkdir()
    (d / "a.csv").write_text("f0,y\n1,0\n2,1\n")
    (d / "b.csv").write_text("f0,y\n2.5,0\n3.5,1\n")  # ints then floats: read as float64
    stats = open_source(DataSpec(source=str(d), label="y")).stats(0, (0.5, 0.5, 0.0), min_train_rows=0)
    assert stats.n_train + stats.n_val == 4 and stats.classes == [0, 1]
    (d / "c.csv").write_text("f0,y\noops,0\n3.5,1\n")
    with pytest.raises(DataError, match=r"data.source: cannot read .* as csv: .*c\.csv"):
        open_source(DataSpec(source=str(d), label="y")).stats(0, (0.5, 0.5, 0.0))
    text = make_table(20).set_column(0, "f0", pa.array(["x"] * 40))  # 20 rows + 20 duplicates
    src = bad(tmp_path, "mixed", [make_table(20), text])
    with pytest.raises(DataError, match="data.source: cannot read .* as parquet"):
        open_source(DataSpec(source=src, label="y")).stats(SEED, FRACTIONS)


# -- the driver never holds the rows -----------------------------------------------------

DRIVER = textwrap.dedent("""
    import json, sys, time
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    from raydl.source import open_source
    from raydl.spec import DataSpec

    def kib(field):
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field))

    # A warm-up pass over a small source first: Ray Data's executor and pyarrow's kernels are
    # imported on the first pass (tens of MiB whatever the data), and are not what is measured.
    warm = open_source(DataSpec(source=sys.argv[2], label="y"))
    warm.split_datasets(warm.stats(0, (0.6, 0.2, 0.2)), 0, (0.6, 0.2, 0.2))["train"].count()
    src = open_source(DataSpec(source=sys.argv[1], label="y"))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak RSS, to the current RSS: start-up's peak is not ours
    before, t0 = kib("VmRSS"), time.perf_counter()
    stats = src.stats(0, (0.6, 0.2, 0.2))
    stats_s = time.perf_counter() - t0
    n_train = src.split_datasets(stats, 0, (0.6, 0.2, 0.2))["train"].count()
    print(json.dumps({"before_kib": before, "peak_kib": kib("VmHWM"), "stats_s": stats_s,
                      "n_train": n_train, "stats_n_train": stats.n_train,
                      "rows": stats.n_train + stats.n_val + stats.n_test}))
""")


@pytest.mark.slow
@pytest.mark.bar  # a memory bound: measured alone (see the note), not in CI's shared run
def test_driver_memory_stays_far_below_the_data(tmp_path):
    """Its own driver process (and Ray); the peak RSS is reset after start-up, whose own peak
    (~350 MiB here, up to ~1 GiB under load) is Ray's and pyarrow's, not the pass's. The pass itself
    grows the driver by a fixed 56-69 MiB (Ray Data's executor; 2026-12-04: 56 at 0.4M rows, 67 at 2M,
    69 at 6M, 778 MiB decoded), so the data is 4M rows: at 2M the quarter (65 MiB) was that overhead."""
    rows, n_features, chunk = 4_000_000, 32, 100_000
    d = tmp_path / "big"
    d.mkdir()
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(n_features)]
    for part in range(4):
        with pq.ParquetWriter(d / f"part-{part}.parquet", pa.schema(
                [(n, pa.float32()) for n in names] + [("y", pa.int64())])) as w:
            for _ in range(rows // 4 // chunk):
                X = rng.normal(size=(chunk, n_features)).astype(np.float32)
                cols = [pa.array(X[:, j]) for j in range(n_features)] + [pa.array(rng.integers(0, 10, chunk))]
                w.write_table(pa.Table.from_arrays(cols, names=[*names, "y"]))
    decoded_kib = rows * (n_features * 4 + 8) // 1024
    small = tmp_path / "small"
    small.mkdir()
    pq.write_table(pq.read_table(d / "part-0.parquet").slice(0, 5000), small / "part-0.parquet")
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(d), str(small)], capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nstats pass {r['rows'] / r['stats_s'] / 1e6:.2f} M rows/s; driver RSS {r['before_kib'] // 1024} MiB "
          f"before, peak {r['peak_kib'] // 1024} MiB; data decoded {decoded_kib // 1024} MiB")
    assert r["rows"] == rows and r["n_train"] == r["stats_n_train"]
    assert r["peak_kib"] - r["before_kib"] < decoded_kib / 4


def test_id_column_and_declared_classes_match_the_in_memory_path(tmp_path):
    from raydl.data import prepare

    rng = np.random.default_rng(4)
    n = 600
    t = pa.table({"rid": np.arange(n) * 7 + 3, "f0": rng.normal(size=n), "y": rng.integers(0, 3, n)})
    src = str(write_parquet(t, tmp_path / "ids", 3))
    spec = DataSpec(source=src, label="y", id_column="rid", classes=[0, 1, 2, 5])
    memory = prepare(spec)
    stats = open_source(spec).stats(0, FRACTIONS)
    assert (stats.n_train, stats.n_val, stats.n_test) == (len(memory.train), len(memory.val), len(memory.test))
    assert stats.classes == memory.prep.classes == [0, 1, 2, 5] and stats.features == ["f0"]
    np.testing.assert_allclose(stats.mean, memory.prep.mean, rtol=1e-12)


MAP_TASK = textwrap.dedent("""
    import pickle, sys
    fns, batch = pickle.loads(sys.stdin.buffer.read())
    for fn in fns:
        fn(batch)
    print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
""")


def test_the_map_functions_unpickle_and_run_in_a_fresh_process_without_torch():
    """Ray Data's map tasks unpickle these in fresh worker processes, and Ray keeps starting new
    ones through a run: importing torch there cost 1.5 s of a core per worker (bench/RESULTS.md,
    2026-12-04), so none of them may need it, nor may any module they import."""
    from raydl.drift.partial import ProfilePass
    from raydl.source import SourceStats
    from raydl.source_batches import Columns, ModelReady, RawRows, StatsPass

    cols = Columns(["a", "b"], "y", "memory")
    stats = SourceStats(6, 1, 1, ["a", "b"], "y", "classification", [0, 1], [0.0, 0.0], [1.0, 1.0], 0.0, 1.0, "fp")
    fractions = (0.6, 0.2, 0.2)
    fns = [StatsPass(cols, 0, fractions, True, ProfilePass(["a", "b"], [], 16, 0)),
           RawRows(cols, 0, fractions, 0), ModelReady(cols, stats, 0, fractions, 0)]
    batch = pa.table({"a": np.arange(8.0), "b": np.ones(8), "y": np.arange(8) % 2})
    for fn in fns:  # they run here, so a failure below is the import, not the call
        fn(batch)
    proc = subprocess.run([sys.executable, "-c", MAP_TASK], input=pickle.dumps((fns, batch)),
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().strip() == "[]", f"torch was imported: {proc.stdout.decode()[:300]}"
