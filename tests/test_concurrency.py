"""Concurrent runs of one name, and stopping a run with a signal.

The unit tests exercise `raydl.runlock` without Ray. The slow ones run the real `raydl`
executable (an embedded Ray each) on a tiny XOR spec, and signal only that driver: it starts its
embedded Ray's processes itself, so they are found as its descendants and cleaned up by pid
(never `ray stop`, which would stop other people's Ray too).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from clusters import REPO, Raydl, alive, descendants, kill_all, ray_env

from raydl.cli import main
from raydl.errors import RaydlError
from raydl.record import newest_whole_checkpoint
from raydl.runlock import RunLock, RunLockedError, lock_path, read_holder
from raydl.runs import RunDir

XOR = str(REPO / "configs" / "xor_mlp.yaml")
NAME = "cc"
EPOCHS = 200


# ---- runlock, no Ray -------------------------------------------------------------------------


def test_second_lock_on_the_same_run_is_refused_with_the_holder(tmp_path):
    path = lock_path(str(tmp_path), NAME)
    with RunLock(path, run=NAME, where=tmp_path / NAME):
        assert read_holder(path)["pid"] == os.getpid()
        with pytest.raises(RunLockedError) as err:
            RunLock(path, run=NAME, where=tmp_path / NAME).acquire()
    msg = str(err.value)
    assert isinstance(err.value, RaydlError) and err.value.exit_code == 2
    assert msg.startswith(f"run {NAME} is already running (pid {os.getpid()} on host ")
    assert msg.endswith(f", {tmp_path / NAME}); wait for it, or pick another run.name")
    with RunLock(path, run=NAME):  # released at the end of the `with`
        pass


def _fork(body) -> int:
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery, just the body and a hard exit
        try:
            body()
        finally:
            os._exit(0)
    return pid


def test_lock_of_a_live_process_blocks_and_of_a_dead_one_does_not(tmp_path):
    path = lock_path(str(tmp_path), NAME)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def hold() -> None:
        RunLock(path, run=NAME).acquire()  # never released: the process just ends
        os.write(ready_w, b"x")
        os.read(go_r, 1)

    child = _fork(hold)
    try:
        assert os.read(ready_r, 1) == b"x"
        with pytest.raises(RunLockedError, match=f"pid {child} on host"):
            RunLock(path, run=NAME).acquire()
    finally:
        os.write(go_w, b"x")
        os.waitpid(child, 0)
    assert read_holder(path)["pid"] == child, "the dead holder's record is left behind"
    with RunLock(path, run=NAME):
        assert read_holder(path)["pid"] == os.getpid()


def test_lock_file_lives_beside_the_run_dir_and_uris_lock_under_raydl_home(tmp_path, monkeypatch):
    path = lock_path(str(tmp_path / "runs"), NAME)
    assert path == (tmp_path / "runs" / f".{NAME}.lock").resolve(), "outside what --restart deletes"
    monkeypatch.setenv("RAYDL_HOME", str(tmp_path / "home"))
    uri = lock_path("s3://bucket/runs", NAME)
    assert uri.parent == tmp_path / "home" / "locks"
    assert uri == lock_path("s3://bucket/runs/", NAME) != lock_path("s3://bucket/runs", "other")


def test_cli_refuses_a_run_and_a_restart_that_another_driver_holds(tmp_path, capsys):
    storage = tmp_path / "runs"
    rdir = storage / NAME
    (rdir / "checkpoint_x").mkdir(parents=True)
    args = ["train", XOR, f"run.storage_path={storage}", f"run.name={NAME}", "tracking=none"]
    with RunLock(lock_path(str(storage), NAME), run=NAME, where=rdir.resolve()):
        for extra in ([], ["--restart"]):
            t0 = time.monotonic()
            assert main([*args, *extra]) == 2
            assert time.monotonic() - t0 < 30
            err = capsys.readouterr().err.strip().splitlines()
            assert err == [f"raydl: error: run {NAME} is already running (pid {os.getpid()} on host {os.uname().nodename} "
                           f"since {read_holder(lock_path(str(storage), NAME))['started_at']}, {rdir.resolve()}); "
                           "wait for it, or pick another run.name"]
    assert sorted(p.name for p in rdir.iterdir()) == ["checkpoint_x"], "--restart touched a held run"


# ---- real runs -------------------------------------------------------------------------------


def train_args(storage: Path, *extra: str) -> list[str]:
    return [
        "train", XOR, f"run.storage_path={storage}", f"run.name={NAME}", f"training.epochs={EPOCHS}",
        "checkpoint.every_n_epochs=1", "data.n_samples=400", "scaling.num_workers=1", "tracking=none", *extra,
    ]


def resumable_epoch(storage: Path) -> int:
    """Epochs done in the checkpoint a rerun resumes from: Ray Train's latest registered one or, after
    a kill that cut Ray Train's record off in mid-write (a SIGKILL did in CI), the newest whole
    checkpoint (`raydl.record.salvage`)."""
    try:
        snap = json.loads((storage / NAME / "checkpoint_manager_snapshot.json").read_text())
    except ValueError:
        newest = newest_whole_checkpoint(RunDir(str(storage / NAME)))
        if newest is None:
            raise
        return newest[1].next_epoch
    latest = storage / NAME / snap["latest_checkpoint_result"]["checkpoint_dir_name"]
    return json.loads((latest / "state.json").read_text())["next_epoch"]


def registered_past(storage: Path, epoch: int) -> bool:
    """Ray Train has registered a checkpoint after `epoch` (its record lags the dirs, more so under load)."""
    try:
        return resumable_epoch(storage) > epoch
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or caught mid-write
        return False


def start(storage: Path, after: int = 0) -> Raydl:
    """Start the run; return once it has printed two epochs and registered a checkpoint past `after`."""
    run = Raydl(train_args(storage), env=ray_env())
    run.wait_until(lambda: len(run.epochs()) >= 2 and registered_past(storage, after), 300,
                   f"epoch 2 and a registered checkpoint past epoch {after}")
    return run


def stop_with(run: Raydl, sig: signal.Signals, timeout: float = 60) -> tuple[int, list[int]]:
    """Send `sig` to the driver only; return its exit code and whichever of its processes outlived it."""
    tree = descendants(run.proc.pid)  # the embedded Ray: gcs, raylet, its workers, the Train controller
    assert tree, "the driver started no processes (no embedded Ray?)"
    os.kill(run.proc.pid, sig)
    rc = run.finish(timeout)
    deadline = time.monotonic() + 15
    while any(alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in tree if alive(p)]
    kill_all(left)
    return rc, left


def assert_interrupted(run: Raydl, storage: Path, rc: int, expected_rc: int, left: list[int]) -> int:
    assert rc == expected_rc, run.stderr[-3000:]
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("raydl:")]
    assert len(lines) == 1, run.stderr[-3000:]
    saved = resumable_epoch(storage)  # the checkpoint is intact and readable
    assert lines[0] == (f"raydl: interrupted: run {NAME} stopped; its last checkpoint (epoch {saved}) is kept; "
                        "run the same command again to resume")
    assert 1 <= saved < EPOCHS
    assert not left, f"processes of the stopped driver still ran: {left}"
    assert not (storage / NAME / "model").exists()
    return saved


@pytest.mark.slow
def test_a_running_run_refuses_others_signals_stop_it_and_a_sigkilled_drivers_lock_does_not_block(tmp_path):
    """One run name through three drivers (each start is a Train start-up, ~30 s here, so they share
    one test): refusals while it runs, SIGINT, a resume that is SIGKILLed, a resume past that, SIGTERM."""
    storage = tmp_path / "runs"
    first = start(storage)
    try:
        rdir = storage / NAME
        inode, spec_mtime = rdir.stat().st_ino, (rdir / "spec.yaml").stat().st_mtime_ns
        for extra in ([], ["--restart"]):
            t0 = time.monotonic()
            second = Raydl(train_args(storage, *extra), env=ray_env())
            assert second.finish(60) == 2, second.stderr[-3000:]
            assert time.monotonic() - t0 < 30, "the refusal was not at once"
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"raydl: error: run {NAME} is already running (pid {first.proc.pid} on host "), lines
            assert lines[0].endswith(f", {rdir.resolve()}); wait for it, or pick another run.name")
        assert rdir.stat().st_ino == inode and (rdir / "spec.yaml").stat().st_mtime_ns == spec_mtime, "--restart touched the running run"
        assert first.proc.poll() is None, "the refusals disturbed the running run"
        at = len(first.epochs())
        first.wait_until(lambda: len(first.epochs()) > at, 60, "an epoch after the refusals")

        rc, left = stop_with(first, signal.SIGINT)
    finally:
        first.kill()
    saved = assert_interrupted(first, storage, rc, 130, left)

    # The same command resumes after the checkpoint. Its driver is SIGKILLed: no handler runs, the lock
    # file keeps the dead driver's record.
    resumed = start(storage, after=saved)
    tree = descendants(resumed.proc.pid)
    try:
        assert resumed.epochs()[0] == saved + 1, f"resumed at epoch {resumed.epochs()[0]}, checkpoint held {saved}"
        os.kill(resumed.proc.pid, signal.SIGKILL)  # the driver only; its embedded Ray outlives it
        resumed.proc.wait(timeout=30)
    finally:
        kill_all([p for p in tree if alive(p)])
        resumed.kill()
    assert read_holder(lock_path(str(storage), NAME))["pid"] == resumed.proc.pid, "the dead driver's record stays"
    killed_at = resumable_epoch(storage)
    assert killed_at > saved

    # The stale lock does not block the next run, which resumes again; SIGTERM stops it like SIGINT (143).
    again = start(storage, after=killed_at)
    try:
        assert again.epochs()[0] == killed_at + 1, f"resumed at epoch {again.epochs()[0]}, checkpoint held {killed_at}"
        assert read_holder(lock_path(str(storage), NAME))["pid"] == again.proc.pid
        rc, left = stop_with(again, signal.SIGTERM)
    finally:
        again.kill()
    assert assert_interrupted(again, storage, rc, 143, left) > killed_at
