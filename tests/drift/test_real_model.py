"""Drift checks with a model trained by the real `raydl train` CLI (slow: Ray Train)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_digits

from raydl.drift import load_profile
from raydl.drift.ood import DIRECTION, SCORES, auroc, output_scores
from raydl.drift.synthetic import shifted_digits

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_raydl_train_model_profile_and_check(tmp_path: Path) -> None:
    raydl = shutil.which("raydl") or str(Path(sys.executable).parent / "raydl")
    r = subprocess.run([raydl, "train", "configs/digits_mlp.yaml", "tracking=none",
                        f"run.storage_path={tmp_path / 'runs'}", "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    model_dir = Path(json.loads(r.stdout.strip().splitlines()[-1])["model_dir"])
    prof = load_profile(model_dir / "profile.json")  # written by raydl train
    assert prof.model is not None and set(prof.model["scores"]) == set(SCORES)

    from raydl.model_dir import load_model

    m = load_model(model_dir)
    from raydl.data import split_indices

    digits = load_digits()
    _, _, held_out = split_indices(digits.data.astype(np.float64), digits.target, (0.6, 0.2, 0.2), seed=0)  # the run's test split
    x = digits.data.astype(np.float64)[held_out]
    ind = output_scores(m.logits(x))
    aurocs = {}
    for kind in ("noise", "inverted", "rotated"):
        xs = shifted_digits(x, kind)
        out = output_scores(m.logits(xs))
        aurocs[kind] = {s: round(auroc(ind[s], out[s], DIRECTION[s]), 3) for s in SCORES}
        pq.write_table(pa.table({f: xs[:, i] for i, f in enumerate(m.features)}),
                       tmp_path / f"{kind}.parquet")
    print("\nraydl-train model AUROC", aurocs)
    # Acceptance: held-out digits told from shifted ones, AUROC >= 0.9 for at least one score.
    assert max(aurocs["inverted"].values()) >= 0.9, aurocs
    c = subprocess.run([sys.executable, "-m", "raydl.drift.cli", "drift", "check", "--profile",
                        str(model_dir / "profile.json"), str(tmp_path / "inverted.parquet"),
                        "--model", str(model_dir), "--mc-dropout", "5", "--json",
                        str(tmp_path / "inv.json")], capture_output=True, text=True, timeout=300)
    assert c.returncode == 3, c.stderr
    d = json.loads((tmp_path / "inv.json").read_text())
    assert [o["name"] for o in d["output"]] == list(SCORES)
    assert d["mc_dropout"]["rows"] == len(held_out) and d["multivariate"]["drifted"]
