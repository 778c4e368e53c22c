"""The driver side of `raydl train`: resolve, connect, check resources, fit, write the model.

Ray types are built from the spec here and nowhere else.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from raydl import finetune
from raydl.batches import build_kind, to_device
from raydl.capacity import worker_need
from raydl.continual import EXTRAS
from raydl.data import Prepared, arrow_blocks, prepare
from raydl.errors import SpecError, TrainingDiverged
from raydl.ingest import Streamed, plan
from raydl.model_dir import (
    inference_latency,
    json_safe,
    load_model,
    manifest,
    write_json_atomic,
    write_model_files,
)
from raydl.models import build_model
from raydl.optim import OPTIMIZERS
from raydl.progress import Progress
from raydl.record import EarlyFinish, prune_unrecorded, salvage
from raydl.runlock import RunLock, lock_path
from raydl.runs import RunDir, check_storage
from raydl.session import check_address, check_resources, embedded_cpus, ray_session
from raydl.sharding import Blocks, choose_loader
from raydl.spec import JobSpec, spec_to_yaml
from raydl.tasks import build_task, run_metrics

log = logging.getLogger("raydl")
MAX_PARAMS = 500_000_000
# Models up to this size are checked on two rows on the CPU rather than on the meta device: on
# meta, torch's decompositions import torch._dynamo and sympy, 0.8-0.9 s of every `raydl train`
# process's start (the workers import them anyway, for DDP, in processes started ahead).
CPU_CHECK_PARAMS = 5_000_000


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path | str  # a URI when run.storage_path is one
    run_name: str
    metrics: dict
    history: list[dict]
    status: str


def resolve(spec: JobSpec) -> Prepared | Streamed:
    """Check the data and resolve every named component, before Ray starts. A streamed source is
    checked from its schema here (no rows read, Ray not started); its rows are checked by the
    statistics pass (`Streamed.with_stats`) once connected, then `check_components` runs."""
    OPTIMIZERS.get(spec.optimizer.name, "optimizer.name")
    streamed = plan(spec)
    if streamed is not None:
        return streamed
    prepared = prepare(spec.data, min_train_rows=spec.scaling.num_workers)
    check_components(spec, prepared.prep, prepared.sample_inputs(rows=2))
    _check_calibration(spec, prepared)
    return prepared


def _check_calibration(spec: JobSpec, prepared: Prepared | Streamed) -> None:
    if spec.training.calibration != "none":
        from raydl.calibration.api import check_calibration

        check_calibration(spec.training.calibration, prepared)


def check_components(spec: JobSpec, prep, sample: dict | None = None) -> None:
    """The task, the model's size, what its output looks like on two `sample` rows (model-ready
    inputs), and the metrics the spec names, for this data."""
    task = build_task(prep, spec.loss)
    kind = build_kind(prep)
    with torch.device("meta"), NoInitOnMeta():  # shapes only: a huge model fails here, not in malloc
        model = build_model(spec.model, kind, task.n_outputs())
    if spec.finetune is not None:
        finetune.check(model, spec.finetune)
    n_params = sum(p.numel() for p in model.parameters())
    if n_params > MAX_PARAMS:
        params = ", ".join(f"{k}={v}" for k, v in spec.model.params.items())
        raise SpecError(f"model: {spec.model.name}({params}) on inputs of shape {prep.sample_shape} has "
                        f"{n_params:,} parameters; at most {MAX_PARAMS:,} are allowed (4 bytes each, times ~4 with Adam's state)")
    if sample is not None:
        if n_params <= CPU_CHECK_PARAMS:
            with torch.random.fork_rng(devices=[]):  # its initialisation draws nothing from the caller's generator
                model = build_model(spec.model, kind, task.n_outputs())
        _check_output(spec, model, kind, task, sample)
    names = run_metrics(task)
    problems = [
        f"{where}: unknown metric {m!r} for a {task.name} task; valid: {', '.join(names)}"
        for where, m in (("checkpoint.metric", spec.checkpoint.metric),
                         ("training.early_stopping.metric", spec.training.early_stopping and spec.training.early_stopping.metric))
        if m and m not in names
    ]
    if problems:
        raise SpecError("; ".join(problems))


class NoInitOnMeta(TorchFunctionMode):
    """Random initialisation of a meta tensor (which holds no values) does nothing. torch runs
    `normal_` on meta through its decompositions, which import torch._dynamo and sympy: 0.8 s of
    every `raydl train` of a model initialised with `kaiming_normal_` (the CNN, ResNet, U-Net)."""

    SKIPPED = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SKIPPED and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


def _check_output(spec: JobSpec, model, kind, task, sample: dict) -> None:
    """A forward pass on two rows: a model that cannot take this data, or whose output the task
    cannot read (a classifier on segmentation data), fails here with one line instead of at the
    first step on the workers. A small model runs it on the CPU; a larger one on the meta device
    (shapes only; ops without a meta kernel, with data-dependent shapes, skip it)."""
    check = getattr(task, "check_output", None)  # the tasks whose outputs have a shape to check
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batch = to_device(kind.collate({k: torch.as_tensor(np.asarray(v)[:2]) for k, v in sample.items()}), device)
    try:
        with torch.no_grad():
            out = model(batch)
    except NotImplementedError:
        return
    except RuntimeError as e:
        if "meta" in str(e).lower():
            return
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise SpecError(f"model: {spec.model.name} cannot run on this data (inputs of shape {kind.shape}): {first}") from None
    if check is not None:
        check(tuple(out.shape))


def run_dir(spec: JobSpec) -> RunDir:
    return RunDir.of(spec)


def train(spec: JobSpec, *, address: str | None = None, restart: bool = False,
          on_epoch: Callable[[dict], None] | None = None, launch_ts: float | None = None,
          warm_next: bool | None = None) -> TrainResult:
    """One training run. `warm_next`: start the next run's processes as this one ends (`raydl.warm`);
    by default when the Ray outlives this run (a running cluster, or a session the caller holds)."""
    launch_ts = launch_ts or float(os.environ.get("RAYDL_LAUNCH_TS") or time.time())
    # Checked before anything is read or written:
    check_storage(spec.run.storage_path)
    if address or os.environ.get("RAY_ADDRESS"):
        check_address(address or os.environ["RAY_ADDRESS"], "--address" if address else "RAY_ADDRESS")  # Ray would retry a closed port for minutes
    prepared = resolve(spec)
    rdir = run_dir(spec)
    # One driver per run: held before the run dir is removed (--restart) or written, until Ray is shut down.
    with RunLock(lock_path(spec.run.storage_path, spec.run.name), run=spec.run.name, where=rdir.path):
        rdir.prepare(restart)
        from raydl.loop import refuse_code

        for ckpt in rdir.local_checkpoints():
            refuse_code(ckpt)  # a crafted checkpoint is refused here, with one line, before any worker reads it
        start_from = salvage(spec, rdir)
        rdir.write_text("spec.yaml", spec_to_yaml(spec))

        streams = isinstance(prepared, Streamed)
        from raydl import warm

        with ray_session(address, embedded_cpus(spec, streams), warm=warm.workers_for(spec.scaling)) as ray_ends:
            check_resources(spec, streams)
            if streams:
                prepared = with_stats(spec, prepared)
            result = _fit(spec, prepared, manifest(spec, prepared.fingerprint), rdir, launch_ts, on_epoch, start_from)
            if (not ray_ends) if warm_next is None else warm_next:  # its model is written: the next run's processes start
                warm.prestart(warm.workers_for(spec.scaling))
        if start_from is not None:
            prune_unrecorded(spec, rdir, start_from)
    return result


def with_stats(spec: JobSpec, streamed: Streamed) -> Streamed:
    """One distributed pass over a streamed source (the data checks and statistics), then the
    components that depend on the data."""
    streamed = streamed.with_stats(spec)
    check_components(spec, streamed.prep, {"x": np.zeros((2, len(streamed.prep.features)), np.float32)})
    _check_calibration(spec, streamed)
    return streamed


def validate(spec: JobSpec, address: str | None = None) -> Prepared | Streamed:
    """What `raydl train` checks before it trains: the spec's components and all of the data (for
    a streamed source, its statistics pass on Ray)."""
    if address or os.environ.get("RAY_ADDRESS"):
        check_address(address or os.environ["RAY_ADDRESS"], "--address" if address else "RAY_ADDRESS")
    prepared = resolve(spec)
    if isinstance(prepared, Streamed):
        with ray_session(address, embedded_cpus(spec, True)):
            prepared = with_stats(spec, prepared)
    return prepared


@dataclass(frozen=True)
class WorkerData:
    """How a run's rows reach its workers (made once; Tune trials share it)."""

    loader: str  # "in_memory" | "ray_data"
    splits: Any  # in_memory: an ObjectRef of {split: columns}
    datasets: dict | None  # ray_data: the Ray Data datasets streamed through Ray Train, per split
    scored: tuple[str, ...]  # the splits scored at the end
    blocks: dict | None = None  # ray_data: the materialized splits' blocks, per split (`sharding.Blocks`)


def worker_data(spec: JobSpec, prepared: Prepared | Streamed, cache: bool = True) -> WorkerData:
    """`cache`: a streamed source's splits may be computed once into the object store
    (`Streamed.datasets`); Tune's trials, which run side by side, each stream theirs. Materialized
    splits reach the workers as their blocks; the others through Ray Train's `streaming_split`."""
    import ray

    if isinstance(prepared, Streamed):
        datasets = prepared.datasets(spec, cache=cache)
        scored = tuple(k for k in datasets if k != "train")
    else:
        loader = choose_loader(spec.data.loader, prepared.train.nbytes)
        parts = {"train": prepared.train, "val": prepared.val, **({"test": prepared.test} if len(prepared.test) else {})}
        scored = tuple(k for k in parts if k != "train")
        if loader == "in_memory":
            return WorkerData(loader, ray.put({k: p.cols for k, p in parts.items()}), None, scored)
        per = {k: (2 if k == "train" else 1) * spec.scaling.num_workers for k in parts}
        return WorkerData(loader, None, None, scored, {k: Blocks.put(arrow_blocks(p, per[k])) for k, p in parts.items()})
    from ray.data.dataset import MaterializedDataset

    blocks = {k: Blocks.of(ds) for k, ds in datasets.items() if isinstance(ds, MaterializedDataset)}
    return WorkerData("ray_data", None, {k: ds for k, ds in datasets.items() if k not in blocks} or None, scored, blocks)


def make_trainer(spec: JobSpec, prepared: Prepared | Streamed, data: WorkerData, man: dict, rdir: RunDir,
                 launch_ts: float, progress: Any = None, report_every_epoch: bool = False, callbacks: tuple = (),
                 start_from: str | None = None, worker_env: dict[str, str] | None = None):
    """The Ray Train `TorchTrainer` of a run: its workers, storage, failure and checkpoint policy."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from raydl import warm
    from raydl.controller import DDPConfig
    from raydl.loop import WorkerConfig, train_loop_per_worker
    from raydl.sharding import ingest_config
    from raydl.trainer import trainer_class

    sc = spec.scaling
    resources = worker_need(sc)
    config = WorkerConfig(spec=spec, prep=prepared.prep, loader=data.loader, run_dir=rdir.wandb_dir(spec.run.name),
                          manifest=man, launch_ts=launch_ts, scored=data.scored, splits=data.splits, blocks=data.blocks,
                          progress=progress, report_every_epoch=report_every_epoch, start_from=start_from)
    storage_path, storage_filesystem = rdir.ray_storage()
    return trainer_class()(
        train_loop_per_worker,
        train_loop_config={"worker": ray.put(config)},  # read by the workers only (`raydl.controller`)
        torch_config=DDPConfig("nccl" if sc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=spec.run.name, storage_path=storage_path, storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=spec.checkpoint.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep_last),
            callbacks=list(callbacks),
            worker_runtime_env={"env_vars": warm.worker_env(worker_env, preload=not sc.use_gpu)},
        ),
        datasets=data.datasets,
        dataset_config=ingest_config() if data.datasets is not None else None,
    )


def _fit(spec, prepared: Prepared | Streamed, man: dict, rdir: RunDir, launch_ts: float, on_epoch,
         start_from: str | None = None) -> TrainResult:
    progress = Progress() if on_epoch is not None else None
    end_progress = progress.follow(on_epoch) if progress is not None else None
    trainer = make_trainer(spec, prepared, worker_data(spec, prepared), man, rdir, launch_ts, progress=progress,
                           start_from=start_from)
    early = None if rdir.remote else EarlyFinish(lambda c: finish_run(spec, prepared, man, rdir, c, start_from), rdir)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        result = trainer.fit()
        if sigint is not None and threading.current_thread() is threading.main_thread():
            # fit() puts in Ray Train's SIGINT handler (it aborts this run's controller) and leaves it
            # there: put the caller's back. Its closure held the finished run's TrainController, which
            # lived on (with its DatasetManager and SplitCoordinators) until the next fit() or exit.
            # Not when fit() raised: the CLI tells Ray Train's abort (SystemExit) by that handler.
            signal.signal(signal.SIGINT, sigint)
    finally:
        if end_progress is not None:
            end_progress()
        if early is not None:
            early.stop()
    written = early.finished_from(result.checkpoint) if early is not None else None
    return written if written is not None else finish_run(spec, prepared, man, rdir, result.checkpoint, start_from)


def finish_run(spec: JobSpec, prepared: Prepared | Streamed, man: dict, rdir: RunDir, checkpoint,
               start_from: str | None = None) -> TrainResult:
    """From a finished run's last `checkpoint` (a Ray Train Checkpoint): its state -> the model directory
    and result.json. A run that started from `start_from` and had nothing left to train reported none."""
    from ray.train import Checkpoint

    from raydl.loop import load_checkpoint

    with (checkpoint or Checkpoint(start_from)).as_directory() as d:
        saved, state = load_checkpoint(d)
    if state.status == "diverged":
        epoch, step = state.diverged_at
        raise TrainingDiverged(
            f"training diverged: the loss or gradients became NaN or infinite at epoch {epoch + 1}, step {step + 1}; "
            "lower optimizer.lr, set training.clip_grad_norm, or check the data"
        )
    return _finish(spec, prepared, man, rdir, state, saved["best_model"], saved.get("extras") or {})


def _finish(spec: JobSpec, prepared: Prepared | Streamed, man: dict, rdir: RunDir, state, best_weights: dict,
            extras: dict) -> TrainResult:
    prep = prepared.prep
    final = {"best_epoch": state.best_epoch, "epochs_run": state.next_epoch, "status": state.status, **state.final}
    eff = state.history[1:] or state.history  # steady state: the first epoch holds start-up costs
    final["samples_per_sec"] = float(np.median([h["samples_per_sec"] for h in eff]))
    final["time_per_step_s"] = float(np.median([h["time_per_step_s"] for h in eff]))
    final["time_to_first_step_s"] = next((h["time_to_first_step_s"] for h in state.history if math.isfinite(h["time_to_first_step_s"])), None)
    final["time_to_last_step_s"] = state.history[-1].get("time_to_last_step_s")  # the end of run is measured from here
    final["warm_workers"] = state.history[-1].get("warm_workers", 0)  # the workers of the last epoch
    final["peak_memory_mb"] = max(h["peak_memory_mb"] for h in state.history)

    def write(d: Path) -> None:
        write_model_files(d, best_weights, spec, prep, {"final": final, "history": state.history}, man)
        if extras:  # what a continual strategy keeps for the next experience (e.g. EWC's Fisher)
            torch.save(extras, d / EXTRAS)
        final.update(inference_latency(load_model(d), prepared.sample_inputs(spec)))
        write_json_atomic(d / "metrics.json", {"final": final, "history": state.history})
        _write_profile(spec, prepared, d)
        if spec.training.calibration != "none":  # fitted on the validation split, written into d
            from raydl.calibration.api import calibrate_model_dir

            cal = calibrate_model_dir(d, spec.training.calibration, prepared=prepared)  # adds to metrics.json
            final.update({f"{s}_ece_calibrated": m["after"]["ece"] for s, m in cal["metrics"].items()})
            saved = json.loads((d / "metrics.json").read_text())
            write_json_atomic(d / "metrics.json", {**saved, "final": final})

    mdir = rdir.publish(write)
    rdir.write_text("result.json", json.dumps(json_safe({"model_dir": mdir, "run_name": spec.run.name, "metrics": final}), indent=2))
    return TrainResult(Path(mdir) if not rdir.remote else mdir, spec.run.name, final, state.history, state.status)


def _write_profile(spec: JobSpec, prepared: Prepared | Streamed, mdir: Path) -> None:
    """The drift reference profile of the train split, with the model's output scores (classifiers)."""
    try:
        from raydl.drift import write_reference_profile
    except ImportError:
        return
    scorer = mdir if prepared.prep.task == "classification" else None  # softmax, entropy, energy scores
    if isinstance(prepared, Streamed):  # from the statistics pass, and one counting pass on the cluster
        prepared.write_profile(spec, mdir, scorer)
    elif prepared.raw_train is not None:  # array data (sequences, graphs) has no per-feature profile
        write_reference_profile(prepared.raw_train, mdir / "profile.json", features=prepared.prep.features, model_dir=scorer)
