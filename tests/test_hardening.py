"""Hardening: no code runs from checkpoints or weights, `cluster down` touches only its own
processes, and every bad path, bad file and bad value is one clear line, exit 2, nothing written."""

from __future__ import annotations

import datetime
import decimal
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from clusters import free_port
from test_bad_input import error_line, fails_cleanly, good_columns, snapshot, table_file, write_spec

from raydl.batches import build_kind
from raydl.cli import _last_checkpoint_epoch, main
from raydl.data import prepare
from raydl.errors import DataError
from raydl.loop import TrainState, load_checkpoint, save_checkpoint
from raydl.model_dir import manifest, write_model_dir
from raydl.models import build_model
from raydl.record import RAY_RECORD, prune_unrecorded, salvage
from raydl.runs import RunDir
from raydl.spec import DataSpec, JobSpec
from raydl.tasks import build_task


def fails(capsys, argv: list[str], *expected: str) -> str:
    """`raydl ARGV` in-process: exit 2, one `raydl: error:` line naming `expected`, nothing on stdout."""
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, err)
    assert out == "" and len(err.strip().splitlines()) == 1, err
    line = error_line(err)
    for e in expected:
        assert e in line, f"{e!r} not in {line!r}"
    return line


# ---- the spec ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("override", "path"), [
    ("training.epochs=true", "training.epochs"),
    ("model.hidden=[true, 8]", "model.hidden.0"),
    ("optimizer.lr=true", "optimizer.lr"),
    ("scaling.num_workers=2.5", "scaling.num_workers"),
])
def test_bools_and_fractions_are_not_coerced(capsys, tmp_path, override, path):
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path)), override], f"{path}:")


def test_duplicate_yaml_keys_are_refused(capsys, tmp_path):
    spec = tmp_path / "dup.yaml"
    spec.write_text("data: {source: iris}\ntraining:\n  epochs: 3\n  epochs: 5\ntracking: none\n")
    fails(capsys, ["validate", str(spec)], "malformed YAML", "line 4", "duplicate key 'epochs'")


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_spec_not_utf8(capsys, tmp_path, encoding):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes("data: {source: iris}\nrun: {name: café}\n".encode(encoding))
    line = fails(capsys, ["validate", str(spec)], "not UTF-8", str(spec))
    assert ("UTF-16" in line) == (encoding == "utf-16")


def test_huge_spec_is_not_parsed_and_values_are_not_echoed_whole(capsys, tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("data: {source: iris}\nrun: {name: " + "a" * (2 << 20) + "}\n")
    fails(capsys, ["validate", str(big)], "at most 1048576 bytes")
    line = fails(capsys, ["validate", str(write_spec(tmp_path)), "run.name=" + "b" * 100_000], "run.name", "100000 chars")
    assert len(line) < 600


@pytest.mark.parametrize(("override", "words"), [
    ("data.n_samples=1000000000000", ["data.n_samples", "10000000"]),
    ("model.hidden=[1000000000]", ["model.hidden", "at most 65536"]),
    ("model.hidden=[60000, 60000, 60000]", ["parameters", "at most 500,000,000"]),
])
def test_sizes_checked_before_allocating(capsys, tmp_path, override, words):
    t0 = time.monotonic()
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path)), override], *words)
    assert time.monotonic() - t0 < 30  # refused, not attempted


# ---- labels -----------------------------------------------------------------------------------


def test_nan_label_is_not_a_class(capsys, tmp_path):
    cols = good_columns()
    cols["y"] = (np.arange(40) % 2).astype(float)
    cols["y"][5] = np.nan
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path, source=str(table_file(tmp_path, cols)), label="y"))],
                  "data.label", "NaN", "row 5")


@pytest.mark.parametrize("label", [
    pa.array([b"x", b"y"] * 20),
    pa.array([decimal.Decimal("1.5"), decimal.Decimal("2.5")] * 20),
    pa.array([datetime.datetime(2026, 1, 1), datetime.datetime(2026, 1, 2)] * 20),
])
def test_label_types_that_cannot_be_saved(capsys, tmp_path, label):
    cols = {**good_columns(), "y": label}
    line = fails_cleanly(capsys, tmp_path, ["validate", str(write_spec(tmp_path, source=str(table_file(tmp_path, cols)), label="y"))],
                         "data.label", "integer, float, bool or string")
    assert str(label.type) in line


# ---- paths ------------------------------------------------------------------------------------


def test_storage_path_that_is_a_file_or_under_one(capsys, tmp_path):
    f = tmp_path / "afile"
    f.write_text("keep")
    for path, words in ((f, ["is a file"]), (f / "runs", ["is a file, not a directory"])):
        spec = write_spec(tmp_path)
        fails(capsys, ["train", str(spec), f"run.storage_path={path}"], "run.storage_path", *words)
    assert f.read_text() == "keep"


def test_storage_path_read_only_or_not_creatable(capsys, tmp_path, readonly_dir):
    for path in (readonly_dir, readonly_dir / "deeper" / "runs"):
        fails(capsys, ["train", str(write_spec(tmp_path)), f"run.storage_path={path}"], "run.storage_path", "not writable")
    assert list(readonly_dir.iterdir()) == []


@pytest.mark.parametrize(("address", "words"), [
    (f"127.0.0.1:{free_port()}", ["nothing is listening", "connection refused"]),
    ("garbage", ["expected host:port"]),
    ("http://127.0.0.1:8265", ["Ray Jobs"]),
], ids=["closed-port", "garbage", "jobs-url"])  # fixed ids: pytest-xdist's workers collect the same tests
def test_bad_address_fails_in_seconds(capsys, tmp_path, monkeypatch, address, words):
    t0 = time.monotonic()
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path)), "--address", address], *words)
    monkeypatch.setenv("RAY_ADDRESS", address)
    fails(capsys, ["train", str(write_spec(tmp_path))], *words)
    assert time.monotonic() - t0 < 15


# ---- checkpoints and weights ------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_checkpoint_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5)
    state = TrainState(next_epoch=3, best_value=0.25, best_epoch=2, status="diverged", diverged_at=(2, 7),
                       history=[{"epoch": 1, "val_loss": 0.5, "time_to_first_step_s": float("nan")}])
    tensors = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
               "scaler": {}, "best_model": model.state_dict()}
    save_checkpoint(str(tmp_path), tensors, state)
    got, st = load_checkpoint(str(tmp_path))
    assert st.next_epoch == 3 and st.diverged_at == (2, 7) and st.history[0]["val_loss"] == 0.5
    torch.testing.assert_close(got["model"]["weight"], model.weight.detach())
    opt.load_state_dict(got["optimizer"])
    assert sorted(os.listdir(tmp_path)) == ["state.json", "state.pt"]


def test_checkpoint_with_code_is_refused(tmp_path):
    marker = tmp_path / "marker"
    save_checkpoint(str(tmp_path), {"model": {}}, TrainState())
    torch.save({"model": {}, "evil": _Payload(str(marker))}, tmp_path / "state.pt")  # a pickle that runs code
    with pytest.raises(DataError, match="refusing to unpickle code") as e:
        load_checkpoint(str(tmp_path))
    assert "\n" not in str(e.value) and str(tmp_path / "state.pt") in str(e.value)
    assert not marker.exists()


@pytest.mark.slow
def test_resuming_from_a_crafted_checkpoint_runs_no_code(ray_local, capsys, tmp_path):
    spec = write_spec(tmp_path)
    assert main(["train", str(spec), "training.epochs=1"]) == 0
    (ckpt,) = sorted(p for p in (tmp_path / "runs" / "bad-run").glob("checkpoint_*") if p.is_dir())[-1:]
    marker = tmp_path / "marker"
    torch.save({"model": {}, "evil": _Payload(str(marker))}, ckpt / "state.pt")
    fails(capsys, ["train", str(spec), "training.epochs=3"], "refusing to unpickle code")
    assert not marker.exists()


def _run_spec(tmp_path: Path) -> JobSpec:
    """Run `r` under `tmp_path` (its checkpoints are written by hand below)."""
    return JobSpec.model_validate({"run": {"name": "r", "storage_path": str(tmp_path)}, "data": {"source": "iris"}, "tracking": "none"})


def _checkpoint(run: Path, stamp: str, next_epoch: int) -> Path:
    d = run / f"checkpoint_2026-12-05_01-00-{stamp}.000000"
    d.mkdir(parents=True)
    save_checkpoint(str(d), {"model": {"w": torch.zeros(2)}}, TrainState(next_epoch=next_epoch))
    return d


@pytest.mark.parametrize("record", [b"", b'{"ray_version": "2.6', None], ids=["empty", "cut", "missing"])
def test_a_cut_off_or_missing_ray_record_resumes_from_the_newest_whole_checkpoint(caplog, tmp_path, record):
    spec = _run_spec(tmp_path)
    run = tmp_path / "r"
    _checkpoint(run, "00", 1)
    whole = _checkpoint(run, "01", 2)
    (_checkpoint(run, "02", 3) / "state.pt").write_bytes(b"PK\x03\x04 cut off")  # the copy the kill cut short
    if record is not None:
        (run / RAY_RECORD).write_bytes(record)
    assert _last_checkpoint_epoch(RunDir.of(spec)) == 2  # what `raydl: interrupted: ...` says is kept
    assert salvage(spec, RunDir.of(spec)) == str(whole)
    assert not (run / RAY_RECORD).exists()
    assert (run / f"{RAY_RECORD}.cut").exists() == (record is not None)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "raydl"]
    assert line.startswith("raydl: run r: ") and line.endswith(f"; resuming from {whole}"), line
    assert ("cut off by a kill" if record is not None else "has no record") in line


def test_a_whole_ray_record_or_no_checkpoint_is_left_to_ray_train(caplog, tmp_path):
    spec = _run_spec(tmp_path)
    run, rdir = tmp_path / "r", RunDir.of(spec)
    run.mkdir()
    assert salvage(spec, rdir) is None  # a new run
    (_checkpoint(run, "00", 1) / "state.pt").write_bytes(b"")
    (run / RAY_RECORD).write_bytes(b"{}")
    assert salvage(spec, rdir) is None and (run / RAY_RECORD).read_bytes() == b"{}"  # Ray Train's to read
    assert not caplog.records
    (run / RAY_RECORD).write_bytes(b"{")
    assert salvage(spec, rdir) is None  # nothing whole: the run starts over, and says so
    (line,) = [r.getMessage() for r in caplog.records if r.name == "raydl"]
    assert line.endswith("and no whole checkpoint is left; starting the run over"), line


def test_after_a_salvaged_run_the_checkpoints_from_before_the_kill_are_pruned_to_keep_last(tmp_path):
    spec = _run_spec(tmp_path)  # keep_last: 2
    run, rdir = tmp_path / "r", RunDir.of(spec)
    old = [_checkpoint(run, f"0{i}", i + 1) for i in range(3)]  # before the kill: not in Ray Train's new record
    cut = _checkpoint(run, "03", 4)  # cut short by the kill; salvage resumed from old[2]
    new = _checkpoint(run, "04", 5)  # the resumed run's
    assert prune_unrecorded(spec, rdir, str(old[2])) == []  # no record: every checkpoint may still be needed
    (run / RAY_RECORD).write_bytes(b'{"ray_version": "2.6')
    assert prune_unrecorded(spec, rdir, str(old[2])) == []
    (run / RAY_RECORD).write_text(json.dumps({"checkpoint_results": [{"checkpoint_dir_name": new.name}]}))
    assert prune_unrecorded(spec, rdir, str(old[2])) == [str(old[0]), str(old[1]), str(cut)]
    assert sorted(p for p in run.glob("checkpoint_*") if p.is_dir()) == [old[2], new]  # the newest two whole ones, as keep_last says
    assert prune_unrecorded(spec, rdir, str(old[2])) == []


@pytest.mark.slow
def test_a_run_killed_while_ray_train_wrote_its_record_resumes(ray_local, caplog, tmp_path):
    """Ray Train rewrites checkpoint_manager_snapshot.json in place; a kill in mid-write left it empty
    (seen in CI), and Ray Train then failed to start the run again ("ActorDiedError ... TrainController.__init__")."""
    spec = write_spec(tmp_path)
    assert main(["train", str(spec), "training.epochs=3"]) == 0
    run = tmp_path / "runs" / "bad-run"
    before = json.loads((run / "model" / "metrics.json").read_text())["history"]
    first, last = sorted(p for p in run.glob("checkpoint_*") if p.is_dir())
    state = (last / "state.pt").read_bytes()
    (last / "state.pt").write_bytes(state[: len(state) // 2])  # killed in epoch 3, as Ray Train rewrote its record
    (run / RAY_RECORD).write_bytes(b"")
    shutil.rmtree(run / "model")
    assert main(["train", str(spec), "training.epochs=3"]) == 0
    assert any(r.getMessage().endswith(f"resuming from {first}") for r in caplog.records), caplog.text
    kept = sorted(p for p in run.glob("checkpoint_*") if p.is_dir())  # the cut one is gone; keep_last: 2
    assert len(kept) == 2 and kept[0] == first and last not in kept, kept
    assert json.loads((run / "result.json").read_text())["metrics"]["epochs_run"] == 3
    after = json.loads((run / "model" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in after] == [1, 2, 3]
    assert after[:2] == before[:2] and after[2] != before[2]  # epochs 1-2 came from the checkpoint, 3 was run again


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A real model directory (iris, tiny MLP), written without Ray."""
    spec = JobSpec.model_validate({"data": {"source": "iris"}, "model": {"hidden": [4]}, "tracking": "none"})
    p = prepare(spec.data)
    module = build_model(spec.model, build_kind(p.prep), build_task(p.prep, spec.loss).n_outputs())
    return write_model_dir(tmp_path / "model", module.state_dict(), spec, p.prep, {"final": {}}, manifest(spec, p.fingerprint))


@pytest.fixture
def iris_file(tmp_path) -> Path:
    from raydl.datasets import DATASETS

    table = DATASETS.get("iris").load(DataSpec(source="iris"))
    path = tmp_path / "iris.parquet"
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("content", [b"", os.urandom(4096), "pickle", "architecture"])
def test_bad_weights_file(capsys, tmp_path, model_dir, iris_file, content):
    w = model_dir / "weights.pt"
    if content == "pickle":
        torch.save({"evil": _Payload(str(tmp_path / "marker"))}, w)
    elif content == "architecture":
        torch.save(torch.nn.Linear(2, 2).state_dict(), w)
    else:
        w.write_bytes(content)
    fails(capsys, ["predict", str(model_dir), str(iris_file), "--out", str(tmp_path / "p.parquet")], str(w), "not loadable")
    fails(capsys, ["evaluate", str(model_dir), str(iris_file)], str(w), "not loadable")
    assert not (tmp_path / "marker").exists() and not (tmp_path / "p.parquet").exists()


def test_predict_and_evaluate_on_empty_data(capsys, tmp_path, model_dir, iris_file):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(iris_file).slice(0, 0), empty)
    fails(capsys, ["predict", str(model_dir), str(empty), "--out", str(tmp_path / "p.parquet")], "no rows")
    fails(capsys, ["evaluate", str(model_dir), str(empty)], "no rows")
    fails(capsys, ["evaluate", str(model_dir), str(empty), "--json"], "no rows")
    assert not (tmp_path / "p.parquet").exists()


def test_evaluate_json_is_strict(capsys, model_dir, iris_file):
    capsys.readouterr()
    assert main(["evaluate", str(model_dir), str(iris_file), "--json"]) == 0

    def no_constants(c):
        raise ValueError(f"non-standard JSON constant {c}")

    metrics = json.loads(capsys.readouterr().out, parse_constant=no_constants)
    assert 0 <= metrics["eval_accuracy"] <= 1


def _bad_outputs(tmp_path: Path, readonly_dir: Path) -> list[tuple[Path, str]]:
    f = tmp_path / "afile"
    f.write_text("keep")
    return [(tmp_path, "is a directory"), (f / "out.x", "is a file, not a directory"), (readonly_dir / "out.x", "not writable")]


def test_predict_out_checked_before_any_work(capsys, tmp_path, model_dir, iris_file, readonly_dir):
    for out, words in _bad_outputs(tmp_path, readonly_dir):
        before = snapshot(tmp_path)
        fails(capsys, ["predict", str(model_dir), str(iris_file), "--out", str(out)], "--out", words)
        assert snapshot(tmp_path) == before


def test_drift_outputs_checked_before_any_work(capsys, tmp_path, iris_file, readonly_dir):
    prof = tmp_path / "prof.json"
    assert main(["drift", "profile", str(iris_file), "--out", str(prof)]) == 0
    for out, words in _bad_outputs(tmp_path, readonly_dir):
        before = snapshot(tmp_path)
        fails(capsys, ["drift", "profile", str(iris_file), "--out", str(out)], "--out", words)
        fails(capsys, ["drift", "check", "--profile", str(prof), str(iris_file), "--json", str(out)], "--json", words)
        fails(capsys, ["drift", "check", "--profile", str(prof), str(iris_file), "--report", str(out)], "--report", words)
        assert snapshot(tmp_path) == before


# ---- cluster down -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.cluster
def test_cluster_down_stops_only_its_own_processes(tmp_path):
    from raydl import cluster

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAYDL_HOME=str(tmp_path / "home"), RAY_USAGE_STATS_ENABLED="0")

    def raydl(*args):
        return subprocess.run([sys.executable, "-m", "raydl.cli", *args], capture_output=True, text=True, env=env, timeout=300)

    up = raydl("cluster", "up", "--num-cpus=1")
    assert up.returncode == 0, up.stderr
    head = json.loads((tmp_path / "home" / "cluster.json").read_text())
    temp = head["temp_dir"]
    # Decoys that share the temp dir's prefix: a process naming such a path, and a file there.
    decoy_file = Path(temp + "5")
    decoy_file.write_text("not Ray's")
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", temp + "5/x", temp + "-other"])
    try:
        assert head["pids"], head  # `up` recorded the head's processes
        down = raydl("cluster", "down")
        assert down.returncode == 0 and "stopped" in down.stdout, down.stderr
        assert decoy.poll() is None, "cluster down killed a process that was not Ray's"
        assert decoy_file.read_text() == "not Ray's"
        assert not cluster._head_processes(temp) and not Path(temp).exists()
    finally:
        decoy.kill()
        decoy_file.unlink(missing_ok=True)
