"""`raydl cluster up | status | down`: a persistent local head that `raydl train` reuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_configs import assert_meets_bar
from test_gc_thresholds import worker_thresholds

from raydl import cluster
from raydl.gc_thresholds import THRESHOLDS

ROOT = Path(__file__).parent.parent


def _raydl(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raydl.cli", *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
@pytest.mark.cluster
def test_train_reuses_the_local_head(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAYDL_HOME=str(tmp_path / "home"), RAY_USAGE_STATS_ENABLED="0")
    os.environ["RAYDL_HOME"] = env["RAYDL_HOME"]
    try:
        assert _raydl("cluster", "status", env=env).returncode == 1
        up = _raydl("cluster", "up", "--num-cpus=2", env=env)
        assert up.returncode == 0, up.stderr
        head = cluster.running()
        assert head is not None and head.address in up.stdout
        assert _raydl("cluster", "up", env=env).stdout == up.stdout  # idempotent: the same head
        # the head's workers collect at raydl's thresholds (raydl.gc_thresholds), as an embedded Ray's do
        assert {k: v for k, v in worker_thresholds(env).items() if k != "driver"} == {"task": THRESHOLDS, "actor": THRESHOLDS}

        # the shipped xor config as it is: its quality bar is checked here (tests/test_configs.py)
        out = _raydl("train", str(ROOT / "configs" / "xor_mlp.yaml"), f"run.storage_path={tmp_path}",
                     "tracking=none", "--json", env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        assert f"using the local cluster at {head.address}" in out.stderr
        result = json.loads(out.stdout)
        assert result["metrics"]["epochs_run"] == 40
        assert result["metrics"]["warm_workers"] >= 1  # in the processes `up` started (raydl.warm; see tests/test_cli.py)
        assert_meets_bar("xor_mlp.yaml", result["metrics"], result["model_dir"])
        assert cluster.running() is not None  # the head outlives the run
    finally:
        down = _raydl("cluster", "down", env=env)
        os.environ.pop("RAYDL_HOME", None)
    assert down.returncode == 0 and "stopped" in down.stdout
    # every process of the head is gone, Ray's client server too (it names only the head's address)
    assert not cluster._head_processes(head.temp_dir, address=head.address) and not cluster._ours(head)
    assert _raydl("cluster", "status", env=env).stdout.strip() == "not running"
