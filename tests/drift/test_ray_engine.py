"""The Ray Data path gives the same numbers as the in-process path (real local Ray)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raydl.drift import build_profile, check
from raydl.drift import synthetic as syn
from raydl.drift.engine import ray_session


@pytest.mark.slow
def test_ray_and_local_paths_agree(tmp_path: Path) -> None:
    (tmp_path / "ref").mkdir()
    for i in range(4):  # several files -> several blocks -> several partial states
        pq.write_table(syn.make_table(5000, seed=i), tmp_path / "ref" / f"part{i}.parquet")
    pq.write_table(syn.make_table(4000, seed=9, scenario="all"), tmp_path / "cur.parquet")
    local_prof = build_profile(tmp_path / "ref", engine="local")
    local = check(local_prof, tmp_path / "cur.parquet", engine="local")
    import ray

    connected = ray.is_initialized()  # another module's shared cluster, when run after one
    with ray_session():
        assert ray.is_initialized()
        ray_prof = build_profile(tmp_path / "ref", engine="ray")
        remote = check(local_prof, tmp_path / "cur.parquet", engine="ray")
    assert ray.is_initialized() == connected  # what we started, we stopped; what we found, we left
    for a, b in zip(local_prof.features, ray_prof.features):
        assert sum(a["counts"]) == sum(b["counts"]) == 20000
        if a["kind"] == "categorical":
            assert a["counts"] == b["counts"]
        else:
            assert a["mean"] == pytest.approx(b["mean"], rel=1e-12)
            assert a["min"] == b["min"] and a["max"] == b["max"]
    assert [f.current_counts for f in local.features] == [f.current_counts for f in remote.features]
    assert local.multivariate.current_counts == remote.multivariate.current_counts
    assert local.drifted_features == remote.drifted_features


@pytest.mark.slow
def test_cli_ray_engine(suite_profile, suite_dir: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "raydl.drift.cli", "drift"]
    suite_profile.save(tmp_path / "p.json")
    r = subprocess.run([*cmd, "check", "--profile", str(tmp_path / "p.json"),
                        str(suite_dir / "corr_flip.parquet"), "--engine", "ray", "--json",
                        str(tmp_path / "o.json")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stderr
    d = json.loads((tmp_path / "o.json").read_text())
    assert d["drifted_features"] == [] and d["multivariate"]["drifted"]
