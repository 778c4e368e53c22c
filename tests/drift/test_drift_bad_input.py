"""Acceptance 4: every bad input is a one-line RaydlError or documented handling."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from raydl.drift import build_profile, check, load_profile
from raydl.drift import synthetic as syn
from raydl.drift.errors import DataError, DriftError, ProfileError
from raydl.errors import RaydlError


@pytest.fixture(scope="module")
def small_profile():
    return build_profile(syn.make_table(4000, seed=1))


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert isinstance(e.value, RaydlError) and e.value.exit_code == 2
    assert "\n" not in msg and msg
    return msg


def test_columns_not_matching_profile(small_profile) -> None:
    cur = syn.make_table(500, seed=2).drop_columns(["x03", "cat"])
    with pytest.raises(DataError) as e:
        check(small_profile, cur)
    msg = _one_line(e)
    assert "x03" in msg and "cat" in msg


def test_wrong_dtype(small_profile) -> None:
    cur = syn.make_table(500, seed=2)
    cur = cur.set_column(cur.schema.get_field_index("x04"), "x04",
                         pa.array([str(v) for v in cur.column("x04").to_pylist()]))
    with pytest.raises(DataError) as e:
        check(small_profile, cur)
    assert "x04 is string, profile expects numeric" in _one_line(e)


def test_unsupported_type_in_reference() -> None:
    t = pa.table({"a": [1.0, 2.0], "b": pa.array([[1], [2]])})
    with pytest.raises(DataError) as e:
        build_profile(t)
    assert "b:list" in _one_line(e)


def test_all_nan_reference_column_is_an_error() -> None:
    t = syn.make_table(500, seed=3).append_column("empty", pa.array([None] * 500, pa.float64()))
    with pytest.raises(DataError) as e:
        build_profile(t)
    assert "['empty'] have no non-missing values" in _one_line(e)


def test_all_nan_current_column_is_flagged_not_crashed(small_profile) -> None:
    cur = syn.make_table(500, seed=2)
    i = cur.schema.get_field_index("x05")
    cur = cur.set_column(i, "x05", pa.array([None] * 500, pa.float64()))
    r = check(small_profile, cur)
    f = next(f for f in r.features if f.name == "x05")
    assert f.status == "all_missing" and f.drifted and r.drifted
    assert json.dumps(r.to_dict(), allow_nan=False)  # None, not NaN, in the JSON


def test_mixed_nans_are_skipped_and_reported(small_profile) -> None:
    cur = syn.make_table(2000, seed=2)
    x = cur.column("x06").to_numpy().copy()
    x[::50] = np.nan  # 2% missing: below the 10% missing-increase limit
    cur = cur.set_column(cur.schema.get_field_index("x06"), "x06", pa.array(x))
    r = check(small_profile, cur)
    f = next(f for f in r.features if f.name == "x06")
    assert f.missing_share["current"] == pytest.approx(0.02)
    assert sum(f.current_counts) == 1960 and not f.drifted
    y = cur.column("x07").to_numpy().copy()
    y[::3] = np.nan  # a third missing: flagged as a missing-value drift
    cur = cur.set_column(cur.schema.get_field_index("x07"), "x07", pa.array(y))
    f = next(f for f in check(small_profile, cur).features if f.name == "x07")
    assert f.drifted and f.verdicts["missing"] and not f.verdicts["js"]


def test_empty_data(small_profile, tmp_path) -> None:
    empty = syn.make_table(10, seed=2).slice(0, 0)
    with pytest.raises(DriftError) as e:
        check(small_profile, empty)
    assert "has no rows" in _one_line(e)
    pq.write_table(empty, tmp_path / "empty.parquet")
    with pytest.raises(DataError) as e:
        build_profile(tmp_path / "empty.parquet")
    assert "has no rows" in _one_line(e)


def test_constant_feature_profiles_and_checks() -> None:
    ref = syn.make_table(2000, seed=4).append_column("const", pa.array(np.full(2000, 7.0)))
    prof = build_profile(ref)
    f = next(f for f in prof.features if f["name"] == "const")
    assert f["edges"] == [7.0] and f["counts"] == [0, 2000, 0]
    same = syn.make_table(1000, seed=5).append_column("const", pa.array(np.full(1000, 7.0)))
    assert "const" not in check(prof, same).drifted_features
    moved = syn.make_table(1000, seed=5).append_column("const", pa.array(np.full(1000, 8.0)))
    assert "const" in check(prof, moved).drifted_features


def test_unseen_categories_go_to_the_unseen_bucket(small_profile) -> None:
    cur = syn.make_table(1000, seed=6)
    cats = np.asarray(cur.column("cat").to_pylist(), dtype=object)
    cats[:300] = "zebra"
    cur = cur.set_column(cur.schema.get_field_index("cat"), "cat", pa.array(cats.tolist()))
    f = next(f for f in check(small_profile, cur).features if f.name == "cat")
    assert f.bins[-1] == "(unseen)" and f.current_counts[-1] == 300
    assert f.unseen_share == pytest.approx(0.3) and f.unseen_examples == ["zebra"] and f.drifted


def test_profile_of_newer_version(small_profile, tmp_path) -> None:
    doc = dict(small_profile.doc, version=99)
    (tmp_path / "p.json").write_text(json.dumps(doc))
    with pytest.raises(ProfileError) as e:
        load_profile(tmp_path / "p.json")
    assert "format version 99, newer than this raydl reads (1)" in _one_line(e)


@pytest.mark.parametrize("text", ["{not json", '{"format": "raydl.drift.profile"}', "[]", "\x00\xff"])
def test_corrupt_profile(tmp_path, text) -> None:
    (tmp_path / "p.json").write_text(text, errors="surrogateescape")
    with pytest.raises(ProfileError) as e:
        load_profile(tmp_path / "p.json")
    _one_line(e)


def test_truncated_counts_are_corrupt(small_profile, tmp_path) -> None:
    doc = json.loads(json.dumps(small_profile.doc))
    doc["features"][0]["counts"] = doc["features"][0]["counts"][:-3]
    (tmp_path / "p.json").write_text(json.dumps(doc))
    with pytest.raises(ProfileError, match="counts do not match its bins"):
        load_profile(tmp_path / "p.json")


def test_missing_data_path_and_wrong_format(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        build_profile(tmp_path / "nope.parquet")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="no .parquet or .csv"):
        build_profile(tmp_path / "x.txt")


def test_csv_and_directory_inputs(tmp_path) -> None:
    t = syn.make_table(3000, seed=8)
    pacsv.write_csv(t, tmp_path / "ref.csv")
    (tmp_path / "parts").mkdir()
    pq.write_table(t.slice(0, 1500), tmp_path / "parts" / "a.parquet")
    pq.write_table(t.slice(1500), tmp_path / "parts" / "b.parquet")
    a = build_profile(tmp_path / "ref.csv")
    b = build_profile(tmp_path / "parts")
    assert a.features[0]["counts"] == b.features[0]["counts"]
    assert sum(b.features[0]["counts"]) == 3000
