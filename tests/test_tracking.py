"""The offline W&B run is read back and matches what raydl reported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from raydl.launch import train
from raydl.spec import load_spec

CONFIG = Path(__file__).parent.parent / "configs" / "digits_mlp.yaml"


def _records(run_dir: Path) -> list[dict]:
    wandb = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))  # the venv's, not on PATH
    out = subprocess.run([wandb, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_offline_run_matches_reported_metrics(ray_local, storage):
    spec = load_spec(CONFIG, [f"run.storage_path={storage}", "run.name=wandb-readback", "training.epochs=3"])
    result = train(spec)
    (run_dir,) = sorted(Path(storage, "wandb-readback", "wandb").glob("offline-run-*"))
    records = _records(run_dir)

    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for logged, reported in zip(history, result.history):
        for key in ("train_loss", "val_loss", "val_accuracy", "val_f1", "samples_per_sec", "peak_memory_mb"):
            assert logged[key] == pytest.approx(reported[key], rel=1e-9), key

    config = next(r["run"]["config"]["update"] for r in records if r["type"] == "run")
    assert config["spec"] == spec.model_dump(mode="json")
    manifest = json.loads((result.model_dir / "manifest.json").read_text())
    assert config["manifest"]["dataset_fingerprint"] == manifest["dataset_fingerprint"]
    assert any(r["type"] == "artifact" for r in records), "the final model is logged as an artifact"
