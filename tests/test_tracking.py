"""An in-process `train()` on the shared Ray: the offline W&B run is read back and matches what
raydl reported, and the finished run leaves no Ray Train actor and no handler of Ray Train's behind."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raydl.launch import train
from raydl.spec import load_spec

CONFIG = Path(__file__).parent.parent / "configs" / "digits_mlp.yaml"


def _records(run_dir: Path) -> list[dict]:
    wandb = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))  # the venv's, not on PATH
    out = subprocess.run([wandb, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _on_sigint(signum, frame):
    raise KeyboardInterrupt


@pytest.fixture(scope="module")
def trained(ray_local, tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    spec = load_spec(CONFIG, [f"run.storage_path={storage}", "run.name=wandb-readback", "training.epochs=3"])
    earlier = _train_actors()  # an earlier test's run in this process's shared Ray may still be ending
    before = signal.signal(signal.SIGINT, _on_sigint)  # a caller's own handler, as the CLI's
    try:
        result = train(spec)
        after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, before)
    return spec, storage, result, (after, earlier)


def _train_actors() -> dict[str, str]:
    """The live Ray Train controllers and dataset managers of the shared Ray: actor id -> class."""
    import ray._private.state

    return {i: a["ActorClassName"] for i, a in ray._private.state.actors().items()
            if a["State"] != "DEAD" and a["ActorClassName"] in ("TrainController", "DatasetManager")}


@pytest.mark.slow
def test_offline_run_matches_reported_metrics(trained):
    spec, storage, result, _ = trained
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


@pytest.mark.slow
def test_a_finished_run_leaves_no_train_actor_and_the_callers_sigint_handler(trained):
    """fit() swaps in Ray Train's SIGINT handler, whose closure holds the run's TrainController: left in
    place, it kept the finished controller and its DatasetManager alive until the next fit()."""
    _, _, _, (after, earlier) = trained
    assert after is _on_sigint, f"Ray Train's SIGINT handler was left in place: {after}"
    deadline, left = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        left = sorted(c for i, c in _train_actors().items() if i not in earlier)  # this run's
        if not left:
            break
        time.sleep(0.5)
    assert not left, f"actors of the finished run still alive: {left}"
