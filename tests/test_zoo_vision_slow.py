"""The vision zoo on real Ray Train (2 CPU workers, DDP): data-parallel equivalence of a CNN and a
U-Net, and the CNN config's bar with its quantised copies run through `raydl predict`/`evaluate`.
The other vision bars take minutes each here: bench/zoo_vision.py checks them (bench/RESULTS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from raydl.cli import main
from raydl.launch import train
from raydl.loop import STATE_FILE
from raydl.quantize import quantize_dir
from raydl.spec import JobSpec, load_spec

CONFIGS = Path(__file__).parent.parent / "configs"


def _final_weights(storage: str, name: str) -> dict:
    (latest,) = sorted(Path(storage, name).glob("checkpoint_*/"))[-1:]
    return torch.load(latest / STATE_FILE, map_location="cpu", weights_only=True)["model"]


# Batch norm is left out on purpose: with BatchNorm each rank normalises by its own batch's
# statistics, so 2 workers x B is a different computation from 1 worker x 2B (not a bug; torch's
# SyncBatchNorm, which would make them equal, needs GPUs). GroupNorm normalises each sample on its
# own, so the CNN keeps a norm layer and the equivalence is exact. The U-Net runs without a norm.
CASES = {
    # digits_images, seed 3, a 20% train split: 344 rows, an even split over 2 ranks (no dropped row)
    "cnn": ({"source": "digits_images", "seed": 3, "split": {"train": 0.2, "val": 0.4, "test": 0.4}, "standardize": "global"},
            {"name": "cnn", "channels": [8, 16], "norm": "group", "dropout": 0.0}, 16),
    # 64 seeded shapes images -> 42 train rows: per-pixel loss over masks
    "unet": ({"source": "shapes_segmentation", "n_samples": 64, "seed": 0, "standardize": "global"},
             {"name": "unet", "base": 4, "depth": 1, "norm": "none"}, 7),
}


def _spec(storage: str, name: str, case: str, workers: int, batch: int) -> JobSpec:
    data, model, _ = CASES[case]
    return JobSpec.model_validate({
        "run": {"name": name, "storage_path": storage}, "data": {**data, "loader": "in_memory"}, "model": model,
        "optimizer": {"name": "momentum", "lr": 0.05, "momentum": 0.9},
        "training": {"epochs": 2, "batch_size": batch, "seed": 7},
        "scaling": {"num_workers": workers}, "checkpoint": {"every_n_epochs": 1, "keep_last": 1}, "tracking": "none",
    })


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_workers_match_one_worker_with_double_batch(ray_local, storage, case):
    batch = CASES[case][2]
    two = train(_spec(storage, f"{case}-2", case, workers=2, batch=batch))
    one = train(_spec(storage, f"{case}-1", case, workers=1, batch=2 * batch))
    assert one.history[-1]["train_loss"] < one.history[0]["train_loss"]  # it trained
    w2, w1 = _final_weights(storage, f"{case}-2"), _final_weights(storage, f"{case}-1")
    assert w2.keys() == w1.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=0)
    for h2, h1 in zip(two.history, one.history):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], abs=1e-5)


@pytest.mark.slow
def test_cnn_config_meets_its_bar_and_its_int8_copy_keeps_it(ray_local, storage, tmp_path, capsys):
    spec = load_spec(CONFIGS / "cnn_digits.yaml", [f"run.storage_path={storage}", "tracking.backend=none"])
    result = train(spec)
    acc = result.metrics["test_accuracy"]
    print(f"cnn_digits.yaml: test_accuracy={acc:.4f} after {result.metrics['epochs_run']} epochs")
    assert acc >= 0.98
    for method in ("static", "dynamic"):
        report = quantize_dir(result.model_dir, tmp_path / f"cnn-{method}", method)
        before, after = report["before"]["test_accuracy"], report["after"]["test_accuracy"]
        print(f"cnn {method} int8: test_accuracy {before:.4f} -> {after:.4f}, weights {report['weights_bytes']}, "
              f"latency {report['latency_ms_per_sample']}")
        assert before == pytest.approx(acc) and after >= before - 0.01
    q = tmp_path / "cnn-static"
    assert main(["predict", str(q), "digits_images", "--out", str(tmp_path / "p.parquet")]) == 0
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 1797
    capsys.readouterr()
    assert main(["evaluate", str(q), "digits_images", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval_accuracy"] >= 0.98
