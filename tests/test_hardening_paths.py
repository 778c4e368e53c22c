"""Hardening, paths and addresses: a bad `run.storage_path`, a bad `--address` / RAY_ADDRESS and a
bad drift output path each fail in seconds with one `raydl: error:` line, exit 2, nothing written."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from clusters import free_port
from test_bad_input import error_line, fails_cleanly, snapshot, write_spec

from raydl.cli import main
from raydl.drift import synthetic as syn


def fails(capsys, argv: list[str], *expected: str) -> str:
    """`raydl ARGV` in-process: exit 2, one stderr line naming `expected`, nothing on stdout."""
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, err)
    assert out == "" and len(err.strip().splitlines()) == 1, err
    line = error_line(err)
    for e in expected:
        assert e in line, f"{e!r} not in {line!r}"
    return line


def _a_file(tmp_path: Path) -> Path:
    f = tmp_path / "afile"
    f.write_text("keep")
    return f


# ---- run.storage_path -------------------------------------------------------------------------


@pytest.mark.parametrize(("under", "words"), [
    ("afile", ["is a file; give a directory"]),
    ("afile/runs", ["cannot create directory", "is a file, not a directory"]),
    ("afile/deeper/runs", ["cannot create directory", "is a file, not a directory"]),
])
def test_storage_path_file_or_under_a_file(capsys, tmp_path, under, words):
    spec = write_spec(tmp_path)
    _a_file(tmp_path)
    before = snapshot(tmp_path)
    fails(capsys, ["train", str(spec), f"run.storage_path={tmp_path / under}"], "run.storage_path", *words)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("deeper", ["", "runs", "a/b/runs"])
def test_storage_path_read_only_or_not_creatable(capsys, tmp_path, readonly_dir, deeper):
    spec = write_spec(tmp_path)
    before = snapshot(tmp_path)
    path = readonly_dir / deeper if deeper else readonly_dir
    fails(capsys, ["train", str(spec), f"run.storage_path={path}"], "run.storage_path", "not writable", str(readonly_dir))
    assert snapshot(tmp_path) == before and list(readonly_dir.iterdir()) == []


# ---- --address and RAY_ADDRESS ----------------------------------------------------------------


BAD_ADDRESSES = [
    pytest.param(f"127.0.0.1:{free_port()}",  # a free port: nothing answers there
                  ["nothing is listening there (connection refused)", "raydl cluster up"],
                 id="closed-port"),  # a fixed id: pytest-xdist's workers must collect the same tests
    ("garbage", ["not a Ray address", "expected host:port", "ray://host:port"]),
    ("127.0.0.1:99999", ["expected host:port"]),
    ("http://127.0.0.1:8265", ["Ray Jobs API", "host:port"]),
]


@pytest.mark.timeout(60)  # before the fix a closed port was retried for minutes
@pytest.mark.parametrize(("address", "words"), BAD_ADDRESSES)
def test_bad_address_flag_fails_in_seconds(capsys, tmp_path, monkeypatch, address, words):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    t0 = time.monotonic()
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path)), "--address", address],
                  f"--address {address!r}", *words)
    assert time.monotonic() - t0 < 10


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("address", "words"), BAD_ADDRESSES)
def test_bad_ray_address_env_fails_in_seconds(capsys, tmp_path, monkeypatch, address, words):
    monkeypatch.setenv("RAY_ADDRESS", address)
    t0 = time.monotonic()
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path))], f"RAY_ADDRESS={address!r}", *words)
    assert time.monotonic() - t0 < 10


# ---- drift outputs ----------------------------------------------------------------------------


@pytest.fixture
def drift_files(tmp_path) -> tuple[Path, Path]:
    """A small dataset and a profile of it."""
    data = tmp_path / "data.parquet"
    pq.write_table(syn.make_table(500, seed=1), data)
    prof = tmp_path / "prof.json"
    assert main(["drift", "profile", str(data), "--out", str(prof), "--engine", "local", "--quiet"]) == 0
    return data, prof


def _bad_outputs(tmp_path: Path, readonly_dir: Path) -> list[tuple[Path, str]]:
    f = _a_file(tmp_path)
    return [(tmp_path, "is a directory"), (f / "out.x", "is a file, not a directory"),
            (f / "deeper" / "out.x", "is a file, not a directory"), (readonly_dir / "out.x", "not writable")]


def test_drift_profile_out_checked_first(capsys, tmp_path, drift_files, readonly_dir):
    data, _ = drift_files
    for out, words in _bad_outputs(tmp_path, readonly_dir):
        before = snapshot(tmp_path)
        fails(capsys, ["drift", "profile", str(data), "--out", str(out), "--engine", "local"], "--out", words)
        assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flag", ["--json", "--report"])
def test_drift_check_outputs_checked_first(capsys, tmp_path, drift_files, readonly_dir, flag):
    data, prof = drift_files
    good = tmp_path / "good.out"
    for out, words in _bad_outputs(tmp_path, readonly_dir):
        before = snapshot(tmp_path)
        other = "--report" if flag == "--json" else "--json"  # a good path beside the bad one is not written either
        fails(capsys, ["drift", "check", "--profile", str(prof), str(data), "--engine", "local",
                       flag, str(out), other, str(good)], flag, words)
        assert snapshot(tmp_path) == before


def test_drift_check_bad_output_before_reading_the_profile(capsys, tmp_path, readonly_dir):
    # The output is checked before any work: even a missing profile is not looked at first.
    fails(capsys, ["drift", "check", "--profile", str(tmp_path / "nope.json"), str(tmp_path / "nope.parquet"),
                   "--json", str(readonly_dir / "d.json")], "--json", "not writable")


def test_drift_writes_through_the_one_atomic_writer():
    from raydl import paths
    from raydl.drift import profile, report

    assert profile.write_atomic is paths.write_atomic and report.write_atomic is paths.write_atomic
