"""The driver side of `raydl train`: resolve, connect, check resources, fit, write the model.

Ray types are built from the spec here and nowhere else.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raydl.batches import build_kind
from raydl.data import Prepared, prepare, to_ray_dataset
from raydl.errors import ResourceError, SpecError, TrainingDiverged
from raydl.model_dir import manifest, write_json_atomic, write_model_dir
from raydl.models import build_model
from raydl.optim import OPTIMIZERS
from raydl.paths import output_dir
from raydl.runlock import RunLock, lock_path
from raydl.sharding import choose_loader
from raydl.spec import JobSpec, spec_to_yaml
from raydl.tasks import build_task, run_metrics

log = logging.getLogger("raydl")
MAX_PARAMS = 500_000_000


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    run_name: str
    metrics: dict
    history: list[dict]
    status: str


def resolve(spec: JobSpec) -> Prepared:
    """Load and check the data and resolve every named component, before Ray starts."""
    OPTIMIZERS.get(spec.optimizer.name, "optimizer.name")
    prepared = prepare(spec.data, min_train_rows=spec.scaling.num_workers)
    prep = prepared.prep
    task = build_task(prep, spec.loss)
    with torch.device("meta"):  # shapes only: nothing is allocated, so a huge model fails here, not in malloc
        model = build_model(spec.model, build_kind(prep), task.n_outputs())
    n_params = sum(p.numel() for p in model.parameters())
    if n_params > MAX_PARAMS:
        params = ", ".join(f"{k}={v}" for k, v in spec.model.params.items())
        raise SpecError(f"model: {spec.model.name}({params}) on {len(prep.features)} features has "
                        f"{n_params:,} parameters; at most {MAX_PARAMS:,} are allowed (4 bytes each, times ~4 with Adam's state)")
    names = run_metrics(task)
    problems = [
        f"{where}: unknown metric {m!r} for a {task.name} task; valid: {', '.join(names)}"
        for where, m in (("checkpoint.metric", spec.checkpoint.metric),
                         ("training.early_stopping.metric", spec.training.early_stopping and spec.training.early_stopping.metric))
        if m and m not in names
    ]
    if problems:
        raise SpecError("; ".join(problems))
    return prepared


def connect(address: str | None) -> bool:
    """Connect to `address` (or RAY_ADDRESS, or `raydl cluster up`'s head), else start an embedded
    local Ray. True if we started it. The caller has checked the address (`check_address`)."""
    if address or os.environ.get("RAY_ADDRESS"):
        address = address or os.environ["RAY_ADDRESS"]
    else:
        from raydl import cluster

        head = cluster.running()
        if head is not None:
            address = head.address
            log.warning("raydl: using the local cluster at %s (raydl cluster down to stop it)", address)
    # `ray start` turns token authentication on by default; a client on the same machine finds the
    # token in ~/.ray/auth_token once told to use one. Ray reads this when it is first imported.
    if address and "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # notices the end of a run sooner (default 2 s)
    import ray

    if ray.is_initialized():
        return False
    # Worker output (Ray Train's per-report INFO lines, Ray Data plans) is kept in Ray's log files;
    # raydl shows its own progress. RAYDL_VERBOSE=1 forwards it all to this terminal.
    verbose = os.environ.get("RAYDL_VERBOSE") == "1"
    kwargs = dict(logging_level=logging.INFO if verbose else logging.WARNING, log_to_driver=verbose, configure_logging=True)
    if address:
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as e:
            raise ResourceError(f"cannot connect to the Ray cluster at {address}: {str(e).splitlines()[0]}; is it running (ray status --address {address})?") from None
    else:
        ray.init(include_dashboard=False, **kwargs)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    return True


def check_address(address: str, where: str = "--address", timeout: float = 2.0) -> None:
    """Fail in seconds, with one line, when `address` is malformed or nothing listens there (Ray itself
    retries a closed port for minutes, and raises a bare ValueError on a malformed address).
    Ray takes `auto`, `host:port` (the GCS, as `ray start --head` prints it) or `ray://host:port`."""
    if address == "auto":
        return
    said = f"{where} {address!r}" if where == "--address" else f"{where}={address!r}"
    if address.startswith(("http://", "https://")):
        raise ResourceError(f"{said}: an http(s) URL is the Ray Jobs API, not a cluster address; give the GCS "
                            "address host:port as `ray start --head` prints it (e.g. 127.0.0.1:6379), or ray://host:port")
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not sep or not host or "/" in host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ResourceError(f"{said}: not a Ray address; expected host:port (e.g. 127.0.0.1:6379), ray://host:port or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        why = ("nothing is listening there (connection refused)" if isinstance(e, ConnectionRefusedError) else
               f"cannot resolve host {host!r}" if isinstance(e, socket.gaierror) else
               f"cannot reach it ({'timed out' if isinstance(e, TimeoutError) else e.strerror or e})")
        raise ResourceError(f"{said}: {why}; start a cluster with `raydl cluster up` or `ray start --head`, "
                            "or give the address of a running one") from None


def check_resources(spec: JobSpec) -> None:
    """Fail at once when the cluster cannot fit the workers (Ray would wait 60 s, then fail vaguely)."""
    import ray

    sc = spec.scaling
    need = {"CPU": sc.cpus_per_worker, **sc.resources_per_worker}
    if sc.use_gpu:
        need["GPU"] = sc.gpus_per_worker
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    total = {k: sum(n.get(k, 0.0) for n in nodes) for k in need}
    short = [f"{k}: {v * sc.num_workers:g} asked ({sc.num_workers} workers x {v:g}), {total[k]:g} in the cluster"
             for k, v in need.items() if v * sc.num_workers > total[k] + 1e-9]
    # Each worker must also fit on one node.
    fits = sum(int(min(n.get(k, 0.0) / v for k, v in need.items())) for n in nodes)
    if short or fits < sc.num_workers:
        detail = "; ".join(short) or f"only {fits} worker(s) fit on the nodes' resources"
        raise ResourceError(f"scaling: the cluster cannot fit {sc.num_workers} workers ({detail}); lower scaling.num_workers or per-worker resources")


def _progress_pump(queue, on_epoch: Callable[[dict], None], stop: threading.Event) -> threading.Thread:
    def pump() -> None:
        while not stop.is_set():
            try:
                on_epoch(queue.get(timeout=0.5))
            except Exception:  # Empty, or the queue actor went away at shutdown
                if stop.is_set():
                    return
        while not queue.empty():
            on_epoch(queue.get_nowait())

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    return th


def run_dir(spec: JobSpec) -> Path:
    return Path(spec.run.storage_path).expanduser().resolve() / spec.run.name


def train(spec: JobSpec, *, address: str | None = None, restart: bool = False,
          on_epoch: Callable[[dict], None] | None = None, launch_ts: float | None = None) -> TrainResult:
    launch_ts = launch_ts or float(os.environ.get("RAYDL_LAUNCH_TS") or time.time())
    # Checked before anything is read or written:
    output_dir(Path(spec.run.storage_path).expanduser(), "run.storage_path")
    if address or os.environ.get("RAY_ADDRESS"):
        check_address(address or os.environ["RAY_ADDRESS"], "--address" if address else "RAY_ADDRESS")  # Ray would retry a closed port for minutes
    prepared = resolve(spec)
    rdir = run_dir(spec)
    # One driver per run: held before the run dir is removed (--restart) or written, until Ray is shut down.
    with RunLock(lock_path(spec.run.storage_path, spec.run.name), run=spec.run.name, where=rdir):
        if restart and rdir.exists():
            shutil.rmtree(rdir)
        rdir.mkdir(parents=True, exist_ok=True)
        from raydl.loop import refuse_code

        for ckpt in sorted(p for p in rdir.glob("checkpoint_*") if p.is_dir()):
            refuse_code(str(ckpt))  # a crafted checkpoint is refused here, with one line, before any worker reads it
        (rdir / "spec.yaml").write_text(spec_to_yaml(spec))
        man = manifest(spec, prepared.fingerprint)

        term = signal.getsignal(signal.SIGTERM)
        started = connect(address)
        if callable(term) and threading.current_thread() is threading.main_thread():
            # ray.init puts a fatal-signal handler on SIGTERM (stack dump, then abort): keep the caller's
            # (the CLI's raises KeyboardInterrupt, so the finally below shuts Ray down).
            signal.signal(signal.SIGTERM, term)
        try:
            check_resources(spec)
            result = _fit(spec, prepared, man, rdir, launch_ts, on_epoch)
        finally:
            if started:
                import ray

                ray.shutdown()
    return result


def _fit(spec, prepared: Prepared, man: dict, rdir: Path, launch_ts: float, on_epoch) -> TrainResult:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydl.loop import WorkerConfig, load_checkpoint, train_loop_per_worker
    from raydl.sharding import ingest_config

    sc = spec.scaling
    queue = stop = pump = None
    if on_epoch is not None:
        from ray.util.queue import Queue

        queue, stop = Queue(actor_options={"num_cpus": 0}), threading.Event()
        pump = _progress_pump(queue, on_epoch, stop)
    resources = {"CPU": sc.cpus_per_worker, **sc.resources_per_worker}
    if sc.use_gpu:
        resources["GPU"] = sc.gpus_per_worker
    loader = choose_loader(spec.data.loader, prepared.train.X.nbytes)
    parts = {"train": prepared.train, "val": prepared.val, **({"test": prepared.test} if len(prepared.test) else {})}
    datasets = dataset_config = splits = None
    if loader == "in_memory":
        splits = ray.put({k: (p.X, p.y) for k, p in parts.items()})
    else:
        datasets = {k: to_ray_dataset(p, num_blocks=(2 if k == "train" else 1) * sc.num_workers) for k, p in parts.items()}
        dataset_config = ingest_config()
    config = WorkerConfig(spec=spec, prep=prepared.prep, loader=loader, run_dir=str(rdir), manifest=man,
                          launch_ts=launch_ts, scored=tuple(k for k in parts if k != "train"), splits=splits, progress=queue)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"worker": config},
        scaling_config=ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=spec.run.name, storage_path=str(rdir.parent),
            failure_config=FailureConfig(max_failures=spec.checkpoint.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep_last),
        ),
        datasets=datasets,
        dataset_config=dataset_config,
    )
    try:
        result = trainer.fit()
    finally:
        if stop is not None:
            stop.set()
            pump.join(timeout=5)
    with result.checkpoint.as_directory() as d:
        saved, state = load_checkpoint(d)
    if state.status == "diverged":
        epoch, step = state.diverged_at
        raise TrainingDiverged(
            f"training diverged: the loss or gradients became NaN or infinite at epoch {epoch + 1}, step {step + 1}; "
            "lower optimizer.lr, set training.clip_grad_norm, or check the data"
        )
    return _finish(spec, prepared, man, rdir, state, saved["best_model"])


def _finish(spec: JobSpec, prepared: Prepared, man: dict, rdir: Path, state, best_weights: dict) -> TrainResult:
    prep = prepared.prep
    final = {"best_epoch": state.best_epoch, "epochs_run": state.next_epoch, "status": state.status, **state.final}
    eff = state.history[1:] or state.history  # steady state: the first epoch holds start-up costs
    final["samples_per_sec"] = float(np.median([h["samples_per_sec"] for h in eff]))
    final["time_per_step_s"] = float(np.median([h["time_per_step_s"] for h in eff]))
    final["time_to_first_step_s"] = next((h["time_to_first_step_s"] for h in state.history if math.isfinite(h["time_to_first_step_s"])), None)
    final["peak_memory_mb"] = max(h["peak_memory_mb"] for h in state.history)
    mdir = write_model_dir(rdir / "model", best_weights, spec, prep, {"final": final, "history": state.history}, man)
    try:
        from raydl.drift import write_reference_profile
    except ImportError:
        write_reference_profile = None
    if write_reference_profile is not None:
        # Output-based OOD scores (softmax, entropy, energy) exist for classifiers only.
        scorer = mdir if prep.task == "classification" else None
        write_reference_profile(prepared.raw_train, mdir / "profile.json", features=prep.features, model_dir=scorer)
    write_json_atomic(rdir / "result.json", {"model_dir": str(mdir), "run_name": spec.run.name, "metrics": final})
    return TrainResult(mdir, spec.run.name, final, state.history, state.status)
