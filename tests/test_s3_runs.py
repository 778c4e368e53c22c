"""A run whose storage is an S3 bucket (a real S3 API server, tests/s3.py): train, a killed driver
resumed, predict, evaluate and drift check from the s3:// model directory, and a half-published
model directory refused."""

from __future__ import annotations

import json
import subprocess

import pyarrow.parquet as pq
import pytest
from clusters import DIGITS, RAYDL, Raydl, ray_env

from raydl import storage
from raydl.datasets import DATASETS
from raydl.errors import DataError
from raydl.model_dir import load_model
from raydl.spec import DataSpec

EPOCHS = 5


def checkpoints(run: str) -> list[str]:
    return [n for n in storage.listdir(run) if n.startswith("checkpoint_")]


@pytest.mark.slow
def test_train_on_s3_resume_after_a_killed_driver_then_serve_from_s3(s3_session, tmp_path):
    env = ray_env(**s3_session.env, RAYDL_HOME=str(tmp_path / "home"))
    runs = s3_session.uri("e2e-runs")
    args = ["train", DIGITS, f"run.storage_path={runs}", f"training.epochs={EPOCHS}", "training.early_stopping=null",
            "checkpoint.every_n_epochs=1", "tracking=none", "--json"]
    run = storage.join(runs, "digits-mlp")

    first = Raydl(args, env=env)
    try:
        first.wait_until(lambda: len(first.epochs()) >= 2 and checkpoints(run), 400, "epoch 2 and a checkpoint on S3")
    finally:
        first.kill()
    assert first.epochs()[-1] < EPOCHS and not storage.exists(storage.join(run, "model"))

    second = Raydl(args, env=env)
    try:
        assert second.finish(400) == 0, second.stderr[-3000:]
    finally:
        second.kill()
    assert 1 < second.epochs()[0], f"the rerun started again from epoch 1:\n{second.stderr[-2000:]}"
    out = json.loads(second.stdout)
    mdir = out["model_dir"]
    assert mdir == storage.join(run, "model") and storage.is_complete(mdir)
    assert out["metrics"]["epochs_run"] == EPOCHS and out["metrics"]["test_accuracy"] > 0.9
    assert json.loads(storage.read_bytes(storage.join(run, "result.json")))["model_dir"] == mdir
    history = json.loads(storage.read_bytes(storage.join(mdir, "metrics.json")))["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))

    def raydl(*a: str) -> subprocess.CompletedProcess:
        return subprocess.run([RAYDL, *a], env=env, capture_output=True, text=True, timeout=300)

    preds = tmp_path / "preds.parquet"
    p = raydl("predict", mdir, "digits", "--out", str(preds))
    assert p.returncode == 0, p.stderr
    assert pq.read_table(preds).num_rows == 1797
    e = raydl("evaluate", mdir, "digits", "--json")
    assert e.returncode == 0, e.stderr
    assert json.loads(e.stdout)["eval_accuracy"] > 0.9
    current = tmp_path / "digits.parquet"  # raydl drift reads files (Parquet/CSV), not built-in names
    pq.write_table(DATASETS.get("digits").load(DataSpec(source="digits")), current)
    d = raydl("drift", "check", "--profile", storage.join(mdir, "profile.json"), str(current), "--model", mdir,
              "--json", str(tmp_path / "drift.json"))
    assert d.returncode in (0, 3), d.stderr
    report = json.loads((tmp_path / "drift.json").read_text())
    assert report["output"]  # the model's output scores were computed from the s3:// model


def test_a_half_published_model_directory_on_s3_is_refused(s3_session, tmp_path):
    """A publish cut short (here: a file deleted after the marker) never loads as a model."""
    from raydl.batches import build_kind
    from raydl.data import prepare
    from raydl.model_dir import manifest, write_model_dir
    from raydl.models import build_model
    from raydl.spec import spec_from_dict
    from raydl.tasks import build_task

    spec = spec_from_dict({"data": {"source": "iris"}, "model": {"name": "mlp", "hidden": [4]}})
    pr = prepare(spec.data)
    module = build_model(spec.model, build_kind(pr.prep), build_task(pr.prep, spec.loss).n_outputs())
    local = write_model_dir(tmp_path / "model", module.state_dict(), spec, pr.prep, {"final": {}}, manifest(spec, pr.fingerprint))
    dest = s3_session.uri("half", "model")
    storage.publish_dir(local, dest)
    assert load_model(dest).prep.classes == pr.prep.classes
    fs, root = storage.filesystem(dest)
    fs.delete_file(f"{root}/weights.pt")
    with pytest.raises(DataError, match="the model directory is incomplete .*weights.pt is missing"):
        load_model(dest)
