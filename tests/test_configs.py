"""Every shipped config is a test case: it validates, runs one short epoch, and meets its bar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raydl.launch import resolve, train
from raydl.spec import load_spec

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))

# Quality bars of the shipped examples (the acceptance); regression reports R².
BARS = {
    "digits_mlp.yaml": ("test_accuracy", 0.96),
    "breast_cancer_logreg.yaml": ("test_accuracy", 0.95),
    "xor_mlp.yaml": ("test_accuracy", 0.95),
    "diabetes_regression.yaml": ("test_r2", 0.30),  # least squares: 0.339 on this split
}


def test_every_config_has_a_quality_bar():
    assert {c.name for c in CONFIGS} == set(BARS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path):
    spec = load_spec(path)
    prepared = resolve(spec)
    assert len(prepared.train) > len(prepared.val) > 0


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_meets_its_bar(path, ray_local, storage):
    spec = load_spec(path, [f"run.storage_path={storage}", "tracking.backend=none"])
    result = train(spec)
    metric, bar = BARS[path.name]
    print(f"{path.name}: {metric}={result.metrics[metric]:.4f} (bar {bar}) after {result.metrics['epochs_run']} epochs")
    assert result.metrics[metric] >= bar
    saved = json.loads((result.model_dir / "metrics.json").read_text())
    assert saved["final"][metric] == pytest.approx(result.metrics[metric])
    assert len(saved["history"]) == result.metrics["epochs_run"]
