"""The collector's thresholds in raydl's processes (raydl.gc_thresholds): the `raydl` command's own,
and those of every Python worker of a Ray that raydl starts (here embedded; `raydl cluster up`'s head
in tests/test_local_cluster.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from raydl.gc_thresholds import THRESHOLDS

DEFAULT = (700, 10, 10)  # CPython's

# Connects as `raydl train` does (here: no head recorded, so an embedded Ray) and reads the thresholds
# a Ray task and a Ray actor (Ray Train's controller and workers are actors) run with.
WORKERS = """
import gc, json
from raydl.session import connect

connect(None)  # before Ray is imported: it may set RAY_AUTH_MODE for `raydl cluster up`'s head
import ray

@ray.remote
def task():
    return gc.get_threshold()

@ray.remote
class Actor:
    def threshold(self):
        return gc.get_threshold()

print(json.dumps({"driver": gc.get_threshold(), "task": ray.get(task.remote()), "actor": ray.get(Actor.remote().threshold.remote())}))
ray.shutdown()
"""


def worker_thresholds(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", WORKERS], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return {k: tuple(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def test_every_worker_of_an_embedded_ray_collects_at_raydls_thresholds(tmp_path):
    assert THRESHOLDS != DEFAULT
    ray_tmp = tempfile.mkdtemp(prefix="rdgc-", dir="/tmp")  # Ray's sockets need a short path
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAYDL_HOME=str(tmp_path / "home"), RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
    try:
        got = worker_thresholds(env)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert got == {"driver": DEFAULT, "task": THRESHOLDS, "actor": THRESHOLDS}  # a program importing raydl keeps its own


def test_the_raydl_command_sets_its_thresholds_and_main_called_from_python_does_not(tmp_path):
    code = """
import gc, json, sys
from raydl.cli import main
before = gc.get_threshold()
main(["cluster", "status"])
called = gc.get_threshold()
sys.argv = ["raydl", "cluster", "status"]
main()
print(json.dumps([before, called, gc.get_threshold()]))
"""
    env = {**os.environ, "RAYDL_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    before, called, console = (tuple(t) for t in json.loads(out.stdout.strip().splitlines()[-1]))
    assert before == called == DEFAULT
    assert console == THRESHOLDS
