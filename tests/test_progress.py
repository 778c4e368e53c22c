"""Rank 0's per-epoch metrics reach the driver while a run trains (`raydl.progress`): in order, from
worker processes, numbered on by a restarted rank 0, with no process of their own, and the run's keys
deleted at its end."""

from __future__ import annotations

import time
from pathlib import Path

from clusters import actors_of

XOR = str(Path(__file__).resolve().parents[1] / "configs" / "xor_mlp.yaml")


def test_a_workers_puts_reach_the_driver_in_order_while_it_runs_and_a_restarted_worker_numbers_on(ray_local):
    import ray
    from ray.experimental import internal_kv as kv

    from raydl.progress import NAMESPACE, Progress

    @ray.remote(num_cpus=0)
    def rank0(progress: Progress, epochs: range) -> int:  # a fresh copy, as a worker receives its config
        for e in epochs:
            progress.put({"epoch": e})
        return progress.next

    progress = Progress()
    got: list[dict] = []
    end = progress.follow(got.append)
    try:
        assert ray.get(rank0.remote(progress, range(1, 4))) == 3
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:  # handed on while the run goes on
            time.sleep(0.05)
        assert got == [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}]
        # Ray Train restarts the worker group from the epoch-2 checkpoint: its rank 0 numbers on.
        assert ray.get(rank0.remote(progress, range(3, 5))) == 5
    finally:
        end()
    assert [m["epoch"] for m in got] == [1, 2, 3, 3, 4]  # the last two read by `end`, none lost
    assert kv._internal_kv_list(progress.prefix, namespace=NAMESPACE) == []  # the run's keys are gone


def test_a_runs_progress_reaches_its_caller_without_a_process_of_its_own(ray_local, tmp_path):
    """A `ray.util.queue.Queue` carried it before: one more actor process for every run."""
    from raydl.launch import train
    from raydl.spec import load_spec

    queues = len(actors_of("_QueueActor"))
    seen: list[dict] = []
    spec = load_spec(XOR, [f"run.storage_path={tmp_path}", "tracking=none", "training.epochs=3"])
    run = train(spec, on_epoch=seen.append)
    assert run.metrics["status"] == "finished"
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    assert len(actors_of("_QueueActor")) == queues
