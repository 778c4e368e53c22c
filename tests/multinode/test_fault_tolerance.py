"""Fault tolerance on a real Ray cluster: a killed training worker, and a killed driver.

Both run `raydl train` as a subprocess against a cluster the test session started (a head and a
worker node on this machine, see clusters.py), on the shipped digits config.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from clusters import DIGITS, Raydl, ray_env

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

EPOCHS = 12
NAME = "digits-mlp"  # the run name in configs/digits_mlp.yaml


def train_args(storage: Path, address: str | None, *extra: str, epochs: int = EPOCHS) -> list[str]:
    return [
        "train", DIGITS, f"run.storage_path={storage}", f"training.epochs={epochs}", "checkpoint.every_n_epochs=1",
        "tracking=none", *(["--address", address] if address else []), "--json", *extra,
    ]


def checkpoints(storage: Path) -> list[Path]:
    return sorted(p for p in (storage / NAME).glob("checkpoint_*") if p.is_dir())


def checkpointed_epochs(storage: Path) -> list[int]:
    """Epochs saved in the run's readable checkpoints (TrainState.next_epoch in state.json)."""

    out = []
    for c in checkpoints(storage):
        try:
            out.append(json.loads((c / "state.json").read_text())["next_epoch"])
        except Exception:  # a checkpoint cut off by the kill
            pass
    return out


def restarts_ok(epochs: list[int]) -> None:
    """Printed epochs only go back where the run restarted, and then never to epoch 1."""
    assert epochs.count(1) == 1, f"epoch 1 trained more than once (a restart from scratch?): {epochs}"
    for prev, cur in zip(epochs, epochs[1:]):
        assert 2 <= cur <= prev + 1, f"bad epoch sequence {epochs}"


def test_worker_killed_mid_run_resumes_from_checkpoint(cluster, tmp_path):
    # The cluster is given by RAY_ADDRESS here (and by --address below): a full run by that route.
    storage = tmp_path / "runs"
    run = Raydl(train_args(storage, None), env=ray_env(RAY_ADDRESS=cluster.address))
    try:
        run.wait_until(lambda: checkpoints(storage) and len(run.epochs()) >= 3, 400, "a checkpoint and epoch 3")
        workers = cluster.train_workers()
        assert len(workers) == 2, f"expected 2 RayTrainWorker processes, found {workers}"
        victim, at_kill = workers[0], run.epochs()
        assert at_kill[-1] < EPOCHS, "the run ended before the kill; it needs more epochs"
        os.kill(victim, signal.SIGKILL)
        replaced = set()
        while run.proc.poll() is None:
            replaced.update(p for p in cluster.train_workers() if p not in workers)
            time.sleep(0.3)
        rc = run.finish(60)
    finally:
        run.kill()
    assert rc == 0, run.stderr[-3000:]
    assert replaced, "no new training worker was started after the kill"
    result = json.loads(run.stdout)
    m = result["metrics"]
    assert m["status"] == "finished" and m["epochs_run"] == EPOCHS
    assert m["test_accuracy"] >= 0.96, m
    epochs = run.epochs()
    restarts_ok(epochs)
    assert epochs[-1] == EPOCHS
    history = json.loads((Path(result["model_dir"]) / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))


def test_driver_killed_then_rerun_resumes_and_restart_starts_fresh(cluster, tmp_path):
    storage = tmp_path / "runs"
    epochs_b = 8  # no quality bar here: fewer epochs
    args = train_args(storage, cluster.address, epochs=epochs_b)

    # 1. Kill the driver (SIGKILL to its process group) once a few epochs are checkpointed.
    first = Raydl(args)
    try:
        first.wait_until(lambda: checkpoints(storage) and len(first.epochs()) >= 3, 400, "a checkpoint and epoch 3")
    finally:
        first.kill()
    killed_at = first.epochs()[-1]
    assert killed_at < epochs_b
    saved = checkpointed_epochs(storage)
    assert saved, "no readable checkpoint"
    assert not (storage / NAME / "model").exists()
    cluster.wait_idle()  # the dead driver's job (controller and workers) is cleaned up by Ray

    # 2. The same command again resumes from the last checkpoint, not from epoch 1.
    second = Raydl(args)
    try:
        rc = second.finish(400)
    finally:
        second.kill()
    assert rc == 0, second.stderr[-3000:]
    epochs = second.epochs()
    assert epochs, second.stderr[-3000:]
    assert 1 < epochs[0] <= max(saved) + 1, f"second run started at epoch {epochs[0]}; checkpoints held epochs {saved}"
    assert epochs == list(range(epochs[0], epochs_b + 1))
    result = json.loads(second.stdout)
    assert result["metrics"]["epochs_run"] == epochs_b
    history = json.loads((Path(result["model_dir"]) / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, epochs_b + 1)), "the history carried in checkpoints"
    old = {p.name for p in checkpoints(storage)}
    assert old

    # 3. --restart throws the run away and starts at epoch 1.
    cluster.wait_idle()
    third = Raydl([*args, "--restart"])
    try:
        third.wait_until(lambda: third.epochs(), 400, "the first epoch of the restarted run")
        assert third.epochs()[0] == 1, third.stderr[-3000:]
        assert not old & {p.name for p in checkpoints(storage)}, "old checkpoints survived --restart"
        assert not (storage / NAME / "model").exists(), "--restart kept the old model directory"
    finally:
        third.kill()
    cluster.wait_idle()
