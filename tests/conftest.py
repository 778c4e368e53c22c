"""Shared fixtures. One embedded Ray instance serves every test that needs Ray in this session;
tests that need their own head or a multi-node cluster start and stop it themselves."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_local():
    """An embedded Ray with 2 CPUs and its own temp dir, shut down at the end of the session."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    tmp = tempfile.mkdtemp(prefix="raydl-test-ray-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture
def storage(tmp_path):
    """A fresh storage path for runs."""
    return str(tmp_path / "runs")
