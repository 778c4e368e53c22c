"""DDP equivalence for the sequence and graph families: 2 workers x batch B give the same weights as
1 worker x batch 2B (dropout off), on padded variable-length sequences (LSTM, packed; Transformer,
padding mask) and on batches of many graphs (GCN, torch-geometric `Batch`). Follows tests/test_ddp.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raydl.launch import train
from raydl.loop import STATE_FILE
from raydl.spec import JobSpec

# (data, model): train splits of 80 and 64 rows (the split hashes rows), so no rank drops a row.
FAMILIES = {
    "lstm": ({"source": "majority", "n_samples": 131}, {"name": "lstm", "hidden": 16, "embed_dim": 8, "bidirectional": True}),
    "transformer": ({"source": "majority", "n_samples": 131},
                    {"name": "transformer", "d_model": 16, "heads": 2, "layers": 1, "ff": 32, "dropout": 0.0}),
    "gcn": ({"source": "graph_shapes", "n_samples": 112}, {"name": "gcn", "hidden": [16, 16]}),
}


def _spec(storage: str, family: str, workers: int, batch: int) -> JobSpec:
    data, model = FAMILIES[family]
    return JobSpec.model_validate({
        "run": {"name": f"ddp-{family}-{workers}", "storage_path": storage},
        "data": {**data, "seed": 0},
        "model": model,
        "optimizer": {"name": "momentum", "lr": 0.05, "momentum": 0.9},
        "training": {"epochs": 2, "batch_size": batch, "seed": 7},
        "scaling": {"num_workers": workers},
        "checkpoint": {"every_n_epochs": 1, "keep_last": 1},
        "tracking": "none",
    })


def _final_weights(storage: str, name: str) -> dict:
    (latest,) = sorted(Path(storage, name).glob("checkpoint_*/"))[-1:]
    return torch.load(latest / STATE_FILE, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_two_workers_match_one_worker_with_double_batch(ray_local, storage, family):
    two = train(_spec(storage, family, workers=2, batch=8))
    one = train(_spec(storage, family, workers=1, batch=16))
    assert two.metrics["epochs_run"] == one.metrics["epochs_run"] == 2
    w2, w1 = _final_weights(storage, f"ddp-{family}-2"), _final_weights(storage, f"ddp-{family}-1")
    assert w2.keys() == w1.keys()
    assert one.history[-1]["train_loss"] < one.history[0]["train_loss"]  # it trained (idle runs also "match")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=0)
    for h2, h1 in zip(two.history, one.history):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], abs=1e-5)
        assert h2["val_accuracy"] == pytest.approx(h1["val_accuracy"])
