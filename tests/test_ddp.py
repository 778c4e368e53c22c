"""Synchronous data-parallel equivalence: 2 workers x batch B == 1 worker x batch 2B (dropout off)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raydl.launch import train
from raydl.loop import STATE_FILE
from raydl.spec import JobSpec


def _final_weights(storage: str, name: str) -> dict:
    (latest,) = sorted(Path(storage, name).glob("checkpoint_*/"))[-1:]
    return torch.load(latest / STATE_FILE, map_location="cpu", weights_only=False)["model"]


def _spec(storage: str, name: str, workers: int, batch: int) -> JobSpec:
    # 200 XOR rows -> 120 train rows. Each step is a full pass (B = 120 / workers), so both runs
    # see the same samples in every step whatever order the shards arrive in.
    return JobSpec.model_validate({
        "run": {"name": name, "storage_path": storage},
        "data": {"source": "xor", "n_samples": 200, "seed": 3},
        "model": {"name": "mlp", "hidden": [16, 16], "activation": "tanh", "dropout": 0.0, "init": "xavier"},
        "optimizer": {"name": "momentum", "lr": 0.1, "momentum": 0.9},
        "training": {"epochs": 6, "batch_size": batch, "seed": 7, "shuffle": False},
        "scaling": {"num_workers": workers},
        "checkpoint": {"every_n_epochs": 1, "keep_last": 1},
        "tracking": "none",
    })


@pytest.mark.slow
def test_two_workers_match_one_worker_with_double_batch(ray_local, storage):
    two = train(_spec(storage, "ddp-2x60", workers=2, batch=60))
    one = train(_spec(storage, "ddp-1x120", workers=1, batch=120))
    assert two.metrics["epochs_run"] == one.metrics["epochs_run"] == 6
    w2, w1 = _final_weights(storage, "ddp-2x60"), _final_weights(storage, "ddp-1x120")
    assert w2.keys() == w1.keys()
    # Training happened (two runs that did nothing would also "match").
    assert one.history[-1]["train_loss"] < one.history[0]["train_loss"] - 0.01
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=0)
    # Per-epoch metrics, reduced over ranks, agree as well.
    for h2, h1 in zip(two.history, one.history):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], abs=1e-5)
        assert h2["val_accuracy"] == pytest.approx(h1["val_accuracy"])
