"""Ray Train's record of a run's checkpoints (`checkpoint_manager_snapshot.json`), as the driver reads it:
the run's end as soon as it is recorded (`EarlyFinish`), and a record a kill cut off (`salvage`,
`prune_unrecorded`)."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raydl.runs import RunDir
from raydl.spec import JobSpec

if TYPE_CHECKING:
    from raydl.launch import TrainResult

log = logging.getLogger("raydl")

RAY_RECORD = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints


def salvage(spec: JobSpec, rdir: RunDir) -> str | None:
    """The checkpoint to resume from when Ray Train's record of the run's checkpoints is cut off or
    missing while checkpoints are on disk; None when Ray Train resumes (or starts) the run itself.

    Ray Train rewrites that record in place at every checkpoint, so a run killed in mid-write leaves
    it empty or cut off, and Ray Train then cannot start the run at all (its controller dies in
    `__init__`, with no word of why). A kill before the first record leaves checkpoints Ray Train
    does not know of, and it would start over. The cut-off record is set aside (`.cut`) and the loop
    starts from the newest whole checkpoint on disk (one cut off by the same kill is passed over)."""
    from raydl import storage
    from raydl.errors import DataError

    record = rdir.join(RAY_RECORD)
    try:
        json.loads(storage.read_bytes(record))
        return None
    except DataError:  # no record
        why = "Ray Train has no record of its checkpoints (the run was killed before it wrote one)"
        if rdir.remote:
            return None
    except ValueError:
        why = f"Ray Train's record of its checkpoints was cut off by a kill (set aside as {RAY_RECORD}.cut)"
        if rdir.remote:
            raise DataError(f"{record}: Ray Train's record of run {spec.run.name}'s checkpoints is cut off (the run was "
                            "killed while it was written); run again with --restart to start the run over") from None
        os.replace(record, record + ".cut")
    newest = newest_whole_checkpoint(rdir)
    if newest is not None:
        log.warning("raydl: run %s: %s; resuming from %s", spec.run.name, why, newest[0])
        return newest[0]
    if rdir.has_checkpoints():
        log.warning("raydl: run %s: %s, and no whole checkpoint is left; starting the run over", spec.run.name, why)
    return None


def prune_unrecorded(spec: JobSpec, rdir: RunDir, start_from: str) -> list[str]:
    """After a run that `salvage` resumed from `start_from`: the checkpoints from before the kill are
    not in Ray Train's new record, so `checkpoint.keep_last` never reaches them. Removed: those newer
    than `start_from` (cut short by the kill: `salvage` passed over them), then those that are not
    among the newest `keep_last` left, as Ray Train would have; the recorded ones stay Ray Train's.
    Nothing is removed while the record cannot be read. Returns what was removed."""
    import shutil

    try:
        recorded = {r["checkpoint_dir_name"] for r in rdir.read_json(RAY_RECORD)["checkpoint_results"]}
    except Exception:  # no whole record: every checkpoint may still be needed
        return []
    ckpts = rdir.local_checkpoints()  # oldest first (the names are timestamps)
    cut = [c for c in ckpts if Path(c).name not in recorded and Path(c).name > Path(start_from).name]
    left = [c for c in ckpts if c not in cut]
    stale = cut + [c for c in left[: -spec.checkpoint.keep_last] if Path(c).name not in recorded]
    for c in stale:
        shutil.rmtree(c, ignore_errors=True)
    return sorted(stale)


def newest_whole_checkpoint(rdir: RunDir) -> tuple[str, Any] | None:
    """The newest checkpoint on local disk that loads whole, with its loop state (a `TrainState`)."""
    from raydl.errors import DataError
    from raydl.loop import load_checkpoint

    for ckpt in reversed(rdir.local_checkpoints()):
        try:
            return ckpt, load_checkpoint(ckpt)[1]
        except DataError:
            continue
    return None


class EarlyFinish:
    """Writes a run's model directory from its last checkpoint as soon as Ray Train has recorded it,
    while `fit()` is still ending. Ray Train's controller counts a worker whose poll carries a report
    as running, so it sees the workers finished one poll (0.5 s) after the last report, and then stops
    the run's processes. The record (read from local disk) names the latest checkpoint, whose loop
    state says when the run has stopped; one recorded before this run started (a rerun of a stopped
    run) is not this run's end. `stop()` waits for a model being written."""

    def __init__(self, finish: Callable[[Any], TrainResult], rdir: RunDir) -> None:
        self._finish, self._rdir = finish, rdir
        self._before = latest_recorded(rdir)
        self._stopped = threading.Event()
        self.checkpoint = None  # the checkpoint it finished from
        self._result: TrainResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._watch, name="raydl-early-finish", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        record, seen = Path(self._rdir.join(RAY_RECORD)), None
        while not self._stopped.wait(0.1):  # a stat 10 times a second: nothing beside the workers' steps
            try:
                mtime = record.stat().st_mtime_ns
            except OSError:
                continue
            if mtime == seen:
                continue
            seen, last = mtime, recorded_last(self._rdir)
            if last is not None and Path(last.path).name != self._before:
                self.checkpoint = last
                try:
                    self._result = self._finish(last)
                except BaseException as e:  # raised by outcome(), in the caller's thread
                    self._error = e
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def outcome(self) -> TrainResult:
        if self._error is not None:
            raise self._error
        return self._result

    def finished_from(self, checkpoint) -> TrainResult | None:
        """The run written from `checkpoint` (fit()'s last), when that is the one this finished from;
        else None, and the caller writes it."""
        if self.checkpoint is None or checkpoint is None or not same_checkpoint(self.checkpoint.path, checkpoint.path):
            return None
        return self.outcome()


def same_checkpoint(a: str, b: str) -> bool:
    """Whether two paths name the same checkpoint of a run (Ray Train's checkpoint directory name)."""
    return Path(a).name == Path(b).name


def latest_recorded(rdir: RunDir) -> str | None:
    """The name of the latest checkpoint in Ray Train's record of the run (local storage), or None.
    Ray Train rewrites the record in place: a read cut off by a write reads as None."""
    try:
        return json.loads(Path(rdir.join(RAY_RECORD)).read_text())["latest_checkpoint_result"]["checkpoint_dir_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recorded_last(rdir: RunDir):
    """The latest recorded checkpoint (a Ray Train Checkpoint) once its loop state says the run has
    stopped; None until then."""
    from ray.train import Checkpoint

    from raydl.loop import stopped

    name = latest_recorded(rdir)
    if name is None or not stopped(rdir.join(name)):
        return None
    return Checkpoint(rdir.join(name))
