"""Fixtures for drift tests: seeded synthetic reference/current files and a profile."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raydl.drift import synthetic as syn
from raydl.drift.profile import Profile, build_profile


@pytest.fixture(scope="session")
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("drift_suite")
    pq.write_table(syn.make_table(20_000, seed=1), d / "reference.parquet")
    for i, sc in enumerate(syn.SCENARIOS):
        pq.write_table(syn.make_table(5_000, seed=100 + i, scenario=sc), d / f"{sc}.parquet")
    return d


@pytest.fixture(scope="session")
def suite_profile(suite_dir: Path) -> Profile:
    return build_profile(suite_dir / "reference.parquet")
