"""Warm processes (`raydl.warm`): a run on a Ray that outlives it leaves the next run processes that
have imported torch, Ray Train and raydl's loop, and the next run's Train workers run in them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from raydl import warm

XOR = str(Path(__file__).resolve().parents[1] / "configs" / "xor_mlp.yaml")


def idle_warm_processes() -> list[int]:
    """This machine's idle Ray worker processes started for raydl's Train workers."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if title.startswith(b"ray::IDLE") and f"{warm.ENV}=1".encode() in env:
            found.append(int(pid))
    return found


def test_the_next_run_in_a_driver_runs_its_workers_in_warm_processes(ray_local, tmp_path):
    from raydl.launch import train
    from raydl.spec import load_spec

    def spec(name):
        return load_spec(XOR, [f"run.name={name}", f"run.storage_path={tmp_path}", "tracking=none", "training.epochs=1"])

    train(spec("first"))  # the shared Ray outlives it: it leaves warm processes for the next
    deadline = time.monotonic() + 120
    while len(idle_warm_processes()) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(idle_warm_processes()) >= 2
    second = train(spec("second"))
    assert second.metrics["warm_workers"] == 2  # both workers: Ray Train asked for exactly these environments
    assert json.loads((Path(second.model_dir) / "metrics.json").read_text())["final"]["warm_workers"] == 2


def test_a_run_ends_well_when_its_warm_processes_cannot_be_started(ray_local, monkeypatch, caplog):
    def refused(*a, **k):
        raise RuntimeError("the raylet refused")

    monkeypatch.setattr(warm, "raylet", refused)
    assert warm.prestart(2) is False
    assert "could not start warm worker processes (the raylet refused)" in caplog.text


def test_warm_processes_are_asked_for_from_a_driver_only(ray_local):
    # a Tune trial runs its Ray Train run from an actor, whose children inherit the actor's environment
    @ray_local.remote
    def from_a_task():
        from raydl import warm

        return warm.prestart(2)

    assert ray_local.get(from_a_task.remote()) is False


def test_a_warm_worker_runs_as_many_torch_threads_as_it_has_cpus(ray_local):
    @ray_local.remote(num_cpus=1, runtime_env={"env_vars": warm.worker_env()})
    class Worker:  # its process imports torch before its task starts, as a Ray Train worker's does
        def threads(self):
            import os

            import torch

            from raydl import warm

            before = torch.get_num_threads()
            warm.use_ray_threads()
            return int(os.environ["OMP_NUM_THREADS"]), before, torch.get_num_threads()

    omp, before, after = ray_local.get(Worker.remote().threads.remote())
    assert omp == 1 and after == 1, before  # before: torch's default, this machine's cores


def test_gpu_workers_are_not_warmed():
    from raydl.spec import ScalingSpec

    assert warm.workers_for(ScalingSpec(num_workers=3)) == 3
    assert warm.workers_for(ScalingSpec(num_workers=3, use_gpu=True)) == 0
    assert warm.ENV not in warm.worker_env({"A": "1"}, preload=False)


@pytest.mark.parametrize("extra", [{}, {"WANDB_RUN_GROUP": "s"}])
def test_the_workers_environment_is_the_callers_and_raydls_written_as_ray_merges_it(extra):
    controller, workers = warm.envs(warm.worker_env(extra))
    c, w = json.loads(controller)["env_vars"], json.loads(workers)["env_vars"]
    assert w == {**c, **extra, warm.ENV: "1"} and warm.ENV not in c
    assert " " not in workers and list(w) == sorted(w)  # compact, sorted: a different string is a different environment


def test_a_tune_trials_processes_get_its_environment_merged_in_as_ray_writes_it():
    parent = {"PL_DISABLE_FORK": "1"}  # what Tune puts into a trial's runtime environment
    controller, workers = warm.envs(warm.worker_env({"WANDB_RUN_GROUP": "s"}), parent)
    c, w = json.loads(controller)["env_vars"], json.loads(workers)["env_vars"]
    assert c["PL_DISABLE_FORK"] == "1" and w == {**c, "WANDB_RUN_GROUP": "s", warm.ENV: "1"}
    assert " " not in controller and list(c) == sorted(c)  # merged with the trial's: written compactly too
