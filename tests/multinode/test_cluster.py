"""Where it runs: `raydl train` against a cluster started with `ray start` (a head and a second
node on this machine), chosen by --address or RAY_ADDRESS; asking for more than it has fails fast.

The full run by RAY_ADDRESS is in test_fault_tolerance.py (the worker-kill run); here RAY_ADDRESS
is proved to pick our cluster by a resource only that cluster has.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from clusters import DIGITS, TEST_RESOURCE, Raydl, ray_env

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def test_address_flag_runs_on_both_nodes(cluster, tmp_path):
    assert len(cluster.raylets()) == 2
    args = ["train", DIGITS, "training.epochs=2", f"run.storage_path={tmp_path / 'runs'}", "run.name=on-two-nodes",
            "tracking=none", "--address", cluster.address, "--json"]
    run = Raydl(args, cwd=str(tmp_path))
    seen: dict[int, set[int]] = {}
    stop = threading.Event()

    def watch() -> None:  # which node (raylet) each training worker process runs under
        while not stop.is_set():
            for raylet, pids in cluster.worker_pids().items():
                seen.setdefault(raylet, set()).update(pids)
            time.sleep(0.3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        rc = run.finish(400)
    finally:
        stop.set()
        watcher.join()
        run.kill()
    assert rc == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert len(lines) == 1, run.stdout  # stdout is exactly one JSON object
    result = json.loads(lines[0])
    assert result["run_name"] == "on-two-nodes"
    assert result["metrics"]["epochs_run"] == 2 and result["metrics"]["status"] == "finished"
    model = Path(result["model_dir"])
    assert model == (tmp_path / "runs" / "on-two-nodes" / "model").resolve()
    assert {"weights.pt", "metrics.json", "spec.yaml"} <= {p.name for p in model.iterdir()}
    assert "epoch 2/2" in run.stderr
    used = {raylet for raylet, pids in seen.items() if pids}
    assert used == set(cluster.raylets()), f"training workers per node: {seen}"


def fails_fast(cluster, args: list[str], env: dict[str, str], *words: str) -> str:
    # The actors of the previous test's run can outlive its driver: under CI's load one lived on
    # through two of the runs below.
    cluster.wait_idle()
    t0 = time.monotonic()
    run = Raydl(args, env=env)
    trainers: set[int] = set()
    while run.proc.poll() is None:  # the check must come before any Ray Train actor is started
        trainers.update(p for n in ("TrainController", "RayTrainWorker") for ps in cluster.worker_pids(n).values() for p in ps)
        time.sleep(0.2)
    rc = run.finish(120)
    took = time.monotonic() - t0
    assert rc == 2, run.stderr[-3000:]
    assert run.stdout == ""
    assert "Traceback" not in run.stderr, run.stderr
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("raydl: error:")]
    assert len(errors) == 1, run.stderr
    for w in ("scaling", *words):
        assert w in errors[0], f"{w!r} not in {errors[0]!r}"
    # Ray itself would start a controller, wait 60 s for the resources, then fail with a generic
    # error. (Wall time here is mostly the CLI's imports and connecting, slow on a loaded machine.)
    assert not trainers, f"Ray Train actors were started: {trainers}"
    assert took < 90, f"took {took:.0f} s"
    return errors[0]


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["scaling.num_workers=3"], ["3 workers", "CPU: 3 asked", "2 in the cluster"]),
        (["scaling.use_gpu=true"], ["GPU: 2 asked", "0 in the cluster"]),
        (["scaling.num_workers=1", "scaling.cpus_per_worker=2"], ["only 0 worker(s) fit"]),  # 2 CPUs, but 1 per node
    ],
)
def test_more_than_the_cluster_has_fails_at_once(cluster, tmp_path, overrides, words):
    args = ["train", DIGITS, f"run.storage_path={tmp_path / 'runs'}", "tracking=none", *overrides,
            "--address", cluster.address, "--json"]
    fails_fast(cluster, args, ray_env(), *words)
    assert not (tmp_path / "runs" / "digits-mlp" / "model").exists()


def test_ray_address_env_picks_the_cluster(cluster, tmp_path):
    # Only our cluster has TEST_RESOURCE (1 per node): its count in the message proves where we connected.
    args = ["train", DIGITS, f"run.storage_path={tmp_path / 'runs'}", "tracking=none", "scaling.num_workers=3",
            f"scaling.resources_per_worker={{{TEST_RESOURCE}: 1}}"]
    fails_fast(cluster, args, ray_env(RAY_ADDRESS=cluster.address), f"{TEST_RESOURCE}: 3 asked", "2 in the cluster")
