"""One Tune trial: an ordinary raydl training run (its own Ray Train worker group) built from the
spec with the trial's values applied.

Ray Train V2 runs inside the trial: the trial function builds a `TorchTrainer` and fits it in a
thread. Tune runs the next trial in the same actor (`reuse_actors`), which has imported Tune, Ray
Train, torch and raydl already: about 2.5 s less between trials (`bench/RESULTS.md`). The loop
reports every epoch (`report_every_epoch`), and a controller callback forwards each report, with
the path of the checkpoint it carries, to the trial function, which reports it to Tune. Unlike
`ray.tune.integration.ray_train.TuneReportCallback` (metrics only), each Train checkpoint becomes a
Tune checkpoint, which PBT needs to clone a parent and `--resume` needs to restart a trial from.

Every start of the trial function is a new Train run `attempt-<k>/` in the trial directory; one
started with a Tune checkpoint (a resumed trial, or a PBT trial that exploited its parent) starts
from that checkpoint: weights, optimizer and the loop's state (its epoch and history).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.train.v2.api.callback import UserCallback

from raydl.spec import spec_from_dict
from raydl.tune.spec import apply_config

RESULT_TIMEOUT_S = 0.5
ABORT_TIMEOUT_S = 30


class _Live:
    """The Train run this trial's actor is running. Tune runs one trial at a time in an actor and
    reuses the actor for the next trial (`reuse_actors=True`): its report queue is kept too."""

    fit = None  # the thread running `trainer.fit()` (`_Fit`)
    controller = None  # the Train controller's handle, known once it has started (`AnnounceController`)
    workers, worker_env = 0, {}  # the run's: for the next trial's warm processes (`raydl.warm`)
    queue = None  # the controller's reports, tagged with their run's name (`ForwardReports`)

    @classmethod
    def end(cls) -> None:
        """Abort the run (workers and placement group released), then wait for its thread."""
        fit, controller = cls.fit, cls.controller
        cls.fit = cls.controller = None
        _abort(controller)
        if fit is not None:
            fit.join(ABORT_TIMEOUT_S)
            cls.warm_next()

    @classmethod
    def reports(cls):
        from ray.util.queue import Queue

        if cls.queue is None:
            cls.queue = Queue(actor_options={"num_cpus": 0})
        return cls.queue

    @classmethod
    def warm_next(cls) -> None:
        from raydl import warm

        warm.prestart_next_trial(cls.workers, cls.worker_env)


class AbortOnStop:
    """Mixed into the trial's Trainable (Tune's `__mixins__` hook). Tune stops a trial (a
    scheduler's decision, the time budget, PBT's exploit) while its function's thread waits in
    `tune.report`: it hands the actor to the next trial (`reset_config`) or drops it (`cleanup`),
    and the thread never gets to its own clean-up before that. Its Train run must end here first,
    or its placement group holds CPUs for good (and a reused actor would start a second run)."""

    def reset_config(self, new_config) -> bool:
        _Live.end()  # then Tune ends the waiting thread (within 2 s, or the next trial fails)
        return super().reset_config(new_config)

    def cleanup(self) -> None:
        _Live.end()
        super().cleanup()


class _ToTrial:
    """On the Train controller: puts `(run, metrics, checkpoint path, the controller's handle)` onto
    the trial actor's queue. The run's name tags it (a stopped run's last words must not reach the
    next trial); the handle lets a stopped trial abort the run."""

    def __init__(self, queue, run: str) -> None:
        self.queue, self.run = queue, run

    def _put(self, metrics: dict | None, checkpoint_path: str | None) -> None:
        import ray

        self.queue.put((self.run, metrics, checkpoint_path, ray.get_runtime_context().current_actor))


class AnnounceController(_ToTrial, ControllerCallback):
    """As the controller starts (no metrics): so that a trial stopped before its run's first report
    can abort the run too."""

    def after_controller_start(self, train_run_context) -> None:
        self._put(None, None)


class ForwardReports(_ToTrial, UserCallback):
    """Each report of rank 0 and its checkpoint's path."""

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        self._put(dict(metrics[0]), checkpoint.path if checkpoint is not None else None)


def trial_spec(base: dict, config: dict[str, Any], trial_dir: Path, search: str, trial_id: str):
    """The trial's spec: the search's base spec, the trial's values, and its own run directory."""
    raw = apply_config(base, config)
    attempt = sum(1 for p in trial_dir.glob("attempt-*") if p.is_dir())
    raw["run"] = {**raw.get("run", {}), "name": f"{search}-{trial_id}",
                  "storage_path": str(trial_dir / f"attempt-{attempt}")}
    return spec_from_dict(raw, origin=f"of trial {trial_id}")


class _Fit(threading.Thread):
    """`trainer.fit()` in a thread of the trial's actor, not in a task of its own: a reused actor
    has imported Ray Train and raydl for the trial before, where a task's new process imported them
    again for each trial (`bench/RESULTS.md`)."""

    def __init__(self, trainer) -> None:
        super().__init__(daemon=True, name="raydl-fit")
        self.trainer, self.result, self.error = trainer, None, None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.trainer.fit()
        except BaseException as e:  # noqa: BLE001 (raised in the trial's thread, by `get`)
            self.error = e

    def get(self):
        self.join()
        if self.error is not None:
            raise self.error
        return self.result


def trial_storage_dir(fallback: Path, trial_id: str) -> Path:
    """The trial's directory in the experiment's storage (Tune's `get_trial_dir()` is a local
    staging directory that is not kept): Tune's storage context, else `fallback/<trial id>`."""
    try:
        from ray.train._internal.session import get_storage

        return Path(get_storage().trial_fs_path)
    except Exception:  # noqa: BLE001 (an internal API; a Ray without it gets the fallback)
        return fallback / trial_id


def run_trial(config: dict, *, base: dict, search: str, prepared, manifest: dict, launch_ts: float,
              experiment_dir: str) -> None:
    """The Tune trial function."""
    from ray import tune
    from ray.train import Checkpoint
    from ray.util.queue import Empty

    from raydl import warm
    from raydl.launch import finish_run, make_trainer, resolve, run_dir, worker_data
    from raydl.loop import stopped
    from raydl.record import same_checkpoint

    ctx = tune.get_context()
    trial_dir = trial_storage_dir(Path(experiment_dir), ctx.get_trial_id())
    spec = trial_spec(base, config, trial_dir, search, ctx.get_trial_id())
    # The driver prepared the data once; a space over data.* keys needs the trial's own.
    prepared = resolve(spec) if prepared is None else prepared
    rdir = run_dir(spec)
    rdir.prepare(False)
    start = tune.get_checkpoint()
    if start is not None and stopped(start.path):  # restored from a run that had ended: nothing to train
        out = finish_run(spec, prepared, manifest, rdir, start)
        tune.report({**out.history[-1], **{k: v for k, v in out.metrics.items() if k.startswith("test_")},
                     "attempt": str(rdir.path)}, checkpoint=start)
        return
    queue, tag = _Live.reports(), str(rdir.path)
    _Live.workers, _Live.worker_env = warm.workers_for(spec.scaling), {"WANDB_RUN_GROUP": search}  # one W&B group a search
    trainer = make_trainer(spec, prepared, worker_data(spec, prepared, cache=False), manifest, rdir, launch_ts,
                           report_every_epoch=True, callbacks=(AnnounceController(queue, tag), ForwardReports(queue, tag)),
                           start_from=start.path if start is not None else None,
                           worker_env=_Live.worker_env)
    # fit() runs in a thread of this trial; `_Live.end` aborts its run when the trial fails or Tune stops it.
    fit = _Live.fit = _Fit(trainer)
    last = out = None  # the run's last report: held back until its model directory is written
    try:
        while True:
            done = not fit.is_alive()
            try:
                run, metrics, ckpt, controller = queue.get(timeout=RESULT_TIMEOUT_S)
            except Empty:
                if done:
                    break
                continue
            if run != tag:  # a report of this actor's previous trial, stopped
                continue
            _Live.controller = controller
            if metrics is None:  # the controller has started
                continue
            metrics["attempt"] = str(rdir.path)
            if ckpt and stopped(ckpt):
                # Training is over and Ray Train has recorded its last checkpoint: the next trial's
                # processes start, and the model directory is written, while Ray Train ends (1.8 s).
                last = (metrics, ckpt)
                _Live.warm_next()
                out = finish_run(spec, prepared, manifest, rdir, Checkpoint.from_directory(ckpt))
                continue
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(ckpt) if ckpt else None)
        result = fit.get()
    except BaseException:
        _Live.end()
        raise
    _Live.fit = _Live.controller = None
    if last is None:  # it never reported its end (a resumed run with nothing left to train)
        _Live.warm_next()
    if out is None or not same_checkpoint(result.checkpoint.path, last[1]):  # not fit()'s last one after all
        out = finish_run(spec, prepared, manifest, rdir, result.checkpoint)  # the model directory, result.json
    if last is not None:  # a scheduler may stop the trial on this report: it comes after the model
        metrics, ckpt = last
        tune.report({**metrics, **{k: v for k, v in out.metrics.items() if k.startswith("test_")}},
                    checkpoint=tune.Checkpoint.from_directory(ckpt))


def _abort(controller) -> None:
    """Abort the Train run the way Ctrl-C does (its workers and placement group released). Killing
    it (or its owner) is not enough: Ray Train's placement-group cleaner asks Ray's state API, which an embedded
    Ray without a dashboard does not serve, so a killed run's group would hold its CPUs for good."""
    import ray

    if controller is None:
        return
    try:
        ray.get(controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
    except Exception:  # noqa: BLE001 (it exits as it aborts; gone already is fine too)
        pass


