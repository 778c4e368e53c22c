"""The `drift` CLI as a user runs it: subprocess, real files, exit codes 0/3/2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "raydl.drift.cli", "drift"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.fixture(scope="module")
def profile_path(suite_dir: Path) -> Path:
    out = suite_dir / "cli_profile.json"
    r = run("profile", suite_dir / "reference.parquet", "--out", out, "--engine", "local")
    assert r.returncode == 0, r.stderr
    return out


def test_check_exit_codes_and_outputs(profile_path: Path, suite_dir: Path, tmp_path: Path) -> None:
    ok = run("check", "--profile", profile_path, suite_dir / "iid.parquet", "--json",
             tmp_path / "iid.json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "iid.json").read_text())["drifted"] is False
    bad = run("check", "--profile", profile_path, suite_dir / "all.parquet", "--json",
              tmp_path / "all.json", "--report", tmp_path / "all.html")
    assert bad.returncode == 3, bad.stderr
    d = json.loads((tmp_path / "all.json").read_text())
    assert sorted(d["drifted_features"]) == ["cat", "x00", "x01", "x02"]
    assert d["features"][0]["drifted"]  # most drifted first
    assert "x00: JS" in bad.stdout
    assert (tmp_path / "all.html").read_text().count("<svg") == 21  # 20 features + PCA


def test_bad_input_exits_2_with_one_line(profile_path: Path, tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text("{oops")
    r = run("check", "--profile", tmp_path / "p.json", profile_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "is not valid JSON" in r.stderr
    r = run("profile", tmp_path / "missing.parquet", "--out", tmp_path / "x.json")
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run("profile", profile_path, "--out", tmp_path / "x.json", "--bins", "0")
    assert r.returncode == 2 and "n_bins=0" in r.stderr


def test_registers_on_an_argparse_main() -> None:
    import argparse

    from raydl.drift.cli import add_parser

    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["drift", "check", "--profile", "p.json", "d.parquet", "--threshold",
                         "fixed", "--js-threshold", "0.2"])
    assert args.func.__name__ == "cmd_check" and args.js_threshold == 0.2


def test_main_raydl_cli_runs_drift(profile_path: Path, suite_dir: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "raydl.cli", "drift", "check", "--profile",
                        str(profile_path), str(suite_dir / "mean_shift.parquet"), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stderr


def test_write_reference_profile_api(tmp_path: Path) -> None:
    from raydl.drift import load_profile, synthetic, write_reference_profile

    table = synthetic.make_table(2000, seed=11)
    out = write_reference_profile(table, tmp_path / "m" / "profile.json", features=["x00", "cat"])
    prof = load_profile(out)
    assert [f["name"] for f in prof.features] == ["x00", "cat"]
    assert prof.pca is None and prof.model is None  # PCA needs >= 2 numeric features
