"""The CLI end to end: train --json, then predict and evaluate with the model directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raydl.cli import main

ROOT = Path(__file__).parent.parent


def test_validate_prints_a_summary(capsys):
    assert main(["validate", str(ROOT / "configs" / "xor_mlp.yaml")]) == 0
    assert "valid (mlp on xor: 1171/413/416 rows in memory, 2 features, classification)" in capsys.readouterr().out


@pytest.mark.slow
def test_train_json_then_predict_and_evaluate(tmp_path):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "raydl.cli", "train", str(ROOT / "configs" / "digits_mlp.yaml"),
           f"run.storage_path={tmp_path}", "training.epochs=4", "tracking=none", "--json",
           # exercised on the way: autocast requested on CPU stays fp32; accumulation; both clippings
           "training.precision=bf16-mixed", "training.grad_accum_steps=2", "training.clip_grad_value=1.0", "training.clip_grad_norm=5.0"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    payload = json.loads(out.stdout)  # exactly one JSON object on stdout, nothing else
    assert set(payload) == {"model_dir", "run_name", "metrics"} and payload["run_name"] == "digits-mlp"
    assert "epoch 4/4" in out.stderr  # progress went to stderr
    mdir = Path(payload["model_dir"])
    assert {p.name for p in mdir.iterdir()} >= {"weights.pt", "spec.yaml", "preprocessing.json", "metrics.json", "manifest.json", "profile.json"}
    m = payload["metrics"]
    assert m["test_accuracy"] > 0.9 and m["samples_per_sec"] > 0 and m["time_to_first_step_s"] > 0
    manifest = json.loads((mdir / "manifest.json").read_text())
    assert manifest["packages"]["ray"] == "2.60.0" and len(manifest["dataset_fingerprint"]) == 16

    # predict: same preprocessing, class values and probabilities per row
    preds = tmp_path / "preds.parquet"
    assert main(["predict", str(mdir), "digits", "--out", str(preds)]) == 0
    table = pq.read_table(preds)
    assert table.num_rows == 1797 and {"prediction", "prob_0", "prob_9"} <= set(table.column_names)
    probs = np.stack([table.column(f"prob_{c}").to_numpy() for c in range(10)], axis=1)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    from sklearn.datasets import load_digits

    acc = float(np.mean(table.column("prediction").to_numpy() == load_digits().target))

    # evaluate: the same accuracy, from the same model and data
    ev = subprocess.run([sys.executable, "-m", "raydl.cli", "evaluate", str(mdir), "digits", "--json"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["eval_accuracy"] == pytest.approx(acc)
