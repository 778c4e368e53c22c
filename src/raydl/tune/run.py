"""The driver side of `raydl tune`: check everything, then run the search on Ray Tune.

Before Ray starts: the spec (its `tune:` section and search space, validated with the rest), the
data and components, the metric. Once connected: whether one trial (its driver plus
`scaling.num_workers` Train workers) fits the cluster, and how many fit at once. Then a `Tuner`
whose trials are `raydl.tune.trial.run_trial`; its experiment directory is `<run dir>/tune`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from raydl.capacity import worker_need
from raydl.errors import NotFoundError, SpecError
from raydl.paths import write_atomic
from raydl.spec import JobSpec
from raydl.tune.spec import AshaSpec, HyperBandSpec, MedianSpec, PbtSpec, TuneSpec

log = logging.getLogger("raydl")
EXPERIMENT = "tune"  # Tune's experiment directory, under the run directory


@dataclass(frozen=True)
class Search:
    """What the driver resolved before Ray starts."""

    spec: JobSpec
    base: dict  # the raw spec the trials start from (no tune section)
    prepared: object  # the data, prepared once (None when the space changes data.*)
    manifest: dict
    run_dir: Path
    launch_ts: float

    @property
    def tune(self) -> TuneSpec:
        return self.spec.tune

    @property
    def experiment_dir(self) -> Path:
        return self.run_dir / EXPERIMENT


def trials_that_fit(driver: Mapping[str, float], worker: Mapping[str, float], num_workers: int,
                    nodes: Sequence[Mapping[str, float]]) -> int:
    """How many trials (one driver and `num_workers` workers each) fit on `nodes` at once, placed
    greedily: each driver and each worker on one node, the fullest-free node first."""
    free = [{k: float(v) for k, v in n.items()} for n in nodes]

    def place(need: Mapping[str, float]) -> bool:
        for n in sorted(free, key=lambda n: -n.get("CPU", 0.0)):
            if all(n.get(k, 0.0) + 1e-9 >= v for k, v in need.items()):
                for k, v in need.items():
                    n[k] = n.get(k, 0.0) - v
                return True
        return False

    count = 0
    while count < 10_000 and place(driver) and all(place(worker) for _ in range(num_workers)):
        count += 1
    return count


def plan(spec: JobSpec, launch_ts: float | None = None) -> Search:
    """Everything checked before Ray starts (a SpecError lists what is wrong)."""
    from raydl.launch import resolve
    from raydl.model_dir import manifest
    from raydl.runs import RunDir, check_storage
    from raydl.storage import is_uri
    from raydl.tasks import build_task, run_metrics

    if spec.tune is None:
        raise SpecError("the spec has no tune: section; add one (tune: {metric, mode, space, scheduler, search}), "
                        "see the README's `raydl tune`")
    if is_uri(spec.run.storage_path):
        raise SpecError(f"run.storage_path: raydl tune keeps its experiment on a local or mounted path; got {spec.run.storage_path!r}")
    check_storage(spec.run.storage_path)
    ts = spec.tune
    base = spec.model_dump(mode="json", by_alias=True, exclude={"tune"})
    sch = ts.scheduler
    if isinstance(sch, AshaSpec | HyperBandSpec) and sch.max_t is not None:
        if sch.max_t > spec.training.epochs:
            raise SpecError(f"tune.scheduler.max_t: {sch.max_t} epochs is more than training.epochs ({spec.training.epochs})")
        base["training"]["epochs"] = sch.max_t  # a trial that reaches max_t finishes its run (model dir, test metrics)
    if isinstance(sch, PbtSpec):
        base["checkpoint"]["every_n_epochs"] = 1  # PBT clones a parent's latest state: a checkpoint every epoch
    prepared = resolve(spec)
    names = run_metrics(build_task(prepared.prep, spec.loss))
    if ts.metric not in names:
        raise SpecError(f"tune.metric: {ts.metric!r} is not reported by a {prepared.prep.task} task; valid: {', '.join(names)}")
    data_keys = [k for k in ts.space if k.startswith("data.")]
    return Search(spec, base, None if data_keys else prepared, manifest(spec, prepared.fingerprint),
                  Path(RunDir.of(spec).path), launch_ts or time.time())


def trial_need(spec: JobSpec) -> tuple[dict[str, float], dict[str, float]]:
    return {"CPU": float(spec.tune.driver_cpus)}, worker_need(spec.scaling)


def embedded_cpus(spec: JobSpec) -> int:
    """Logical CPUs for an embedded Ray: the cores, or at least one trial's worth (its driver mostly waits)."""
    driver, worker = trial_need(spec)
    return max(os.cpu_count() or 1, math.ceil(driver["CPU"] + spec.scaling.num_workers * worker["CPU"]))


def check_fit(spec: JobSpec) -> int:
    """How many trials run at once on the connected cluster; a ResourceError if not even one fits."""
    import ray

    from raydl.errors import ResourceError

    driver, worker = trial_need(spec)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    fits = trials_that_fit(driver, worker, spec.scaling.num_workers, nodes)
    if fits < 1:
        total = sum(n.get("CPU", 0.0) for n in nodes)
        asked = driver["CPU"] + spec.scaling.num_workers * worker["CPU"]
        raise ResourceError(f"tune: one trial needs {asked:g} CPUs (its driver {driver['CPU']:g} + scaling.num_workers "
                            f"{spec.scaling.num_workers} x {worker['CPU']:g}) and the cluster has {total:g}; lower "
                            "scaling.num_workers or tune.driver_cpus, or give the cluster more CPUs")
    return min(fits, spec.tune.max_concurrent_trials or fits)


def param_space(ts: TuneSpec) -> dict:
    from ray import tune

    make = {"choice": tune.choice, "grid": tune.grid_search, "uniform": lambda a: tune.uniform(*a),
            "loguniform": lambda a: tune.loguniform(*a), "randint": lambda a: tune.randint(*a),
            "qrandint": lambda a: tune.qrandint(*a)}
    return {k: make[d.kind](d.args) for k, d in ts.space.items()}


def scheduler(ts: TuneSpec):
    """Tune's scheduler for the spec; time is counted in epochs (the `epoch` each trial reports)."""
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        HyperBandScheduler,
        MedianStoppingRule,
        PopulationBasedTraining,
    )

    s = ts.scheduler
    if isinstance(s, AshaSpec):
        return ASHAScheduler(time_attr="epoch", grace_period=s.grace_period, reduction_factor=s.reduction_factor,
                             max_t=s.max_t or 100_000)
    if isinstance(s, HyperBandSpec):
        return HyperBandScheduler(time_attr="epoch", reduction_factor=s.reduction_factor, max_t=s.max_t or 100_000)
    if isinstance(s, MedianSpec):
        return MedianStoppingRule(time_attr="epoch", grace_period=s.grace_period, min_samples_required=s.min_samples_required)
    if isinstance(s, PbtSpec):
        space = param_space(ts)
        return PopulationBasedTraining(time_attr="epoch", perturbation_interval=s.perturbation_interval,
                                       hyperparam_mutations={k: space[k] for k in s.mutations},
                                       quantile_fraction=s.quantile_fraction,
                                       resample_probability=s.resample_probability, synch=False)
    return FIFOScheduler()


def search_alg(ts: TuneSpec, concurrency: int):
    if ts.search.name == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(sampler=TPESampler(seed=ts.seed)), max_concurrent=concurrency)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=ts.seed, max_concurrent=concurrency)


def trainable(search: Search):
    from ray import tune

    from raydl.tune.trial import AbortOnStop, run_trial

    fn = tune.with_parameters(run_trial, base=search.base, search=search.spec.run.name, prepared=search.prepared,
                              manifest=search.manifest, launch_ts=search.launch_ts,
                              experiment_dir=str(search.experiment_dir))
    fn.__mixins__ = (AbortOnStop,)  # a stopped trial ends its Train run (raydl.tune.trial.AbortOnStop)
    return tune.with_resources(fn, {"cpu": search.tune.driver_cpus})


def has_experiment(search: Search) -> bool:
    return (search.experiment_dir / "tuner.pkl").is_file()


def run_search(search: Search, *, resume: bool, concurrency: int, callbacks: Sequence = ()):
    """Run (or, with `resume`, continue) the search; its ResultGrid."""
    from ray import tune

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # frequent on purpose
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # raydl prints its own progress (verbose=0 below)  # the experiment state, often: a killed driver loses little
    ts = search.tune
    if resume:
        tuner = tune.Tuner.restore(str(search.experiment_dir), trainable=trainable(search),
                                   resume_unfinished=True, resume_errored=True)
        return tuner.fit()
    run_config = tune.RunConfig(
        name=EXPERIMENT, storage_path=str(search.run_dir), verbose=0, callbacks=list(callbacks),
        # PBT restores a trial from another's checkpoint, possibly an older one: keep them all
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None if isinstance(ts.scheduler, PbtSpec) else 2))
    tune_config = tune.TuneConfig(
        metric=ts.metric, mode=ts.mode, num_samples=ts.num_samples, max_concurrent_trials=None,  # search_alg limits it
        time_budget_s=ts.time_budget_s, scheduler=scheduler(ts), search_alg=search_alg(ts, concurrency),
        reuse_actors=True)  # a trial's actor and report queue serve the next trial (`raydl.tune.trial`)
    tuner = tune.Tuner(trainable(search), param_space=param_space(ts), tune_config=tune_config, run_config=run_config)
    return tuner.fit()


def check_resume(search: Search, resume: bool) -> None:
    if resume and not has_experiment(search):
        raise NotFoundError(f"--resume: no search to resume at {search.experiment_dir} (run.name "
                            f"{search.spec.run.name!r} under {search.spec.run.storage_path}); start it without --resume")
    if not resume and has_experiment(search):
        raise SpecError(f"a search named {search.spec.run.name!r} already exists at {search.experiment_dir}; pass --resume "
                        "to continue it, or set run.name to start another")


def tune(spec: JobSpec, *, address: str | None = None, resume: bool = False, callbacks: Sequence = (),
         on_start: Callable[[int], None] | None = None):
    """Run the spec's search (or continue it); the trials table and the best trial (`results.Outcome`)."""
    from raydl.runlock import RunLock, lock_path
    from raydl.session import check_address, ray_session
    from raydl.spec import spec_to_yaml
    from raydl.tune.results import collect

    where = address or os.environ.get("RAY_ADDRESS")
    if where:
        check_address(where, "--address" if address else "RAY_ADDRESS")
    search = plan(spec)
    check_resume(search, resume)
    with RunLock(lock_path(spec.run.storage_path, spec.run.name), run=spec.run.name, where=search.run_dir):
        search.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_atomic(search.run_dir / "spec.yaml", spec_to_yaml(spec))
        with ray_session(address, embedded_cpus(spec)):
            concurrency = check_fit(spec)
            if on_start is not None:
                on_start(concurrency)
            grid = run_search(search, resume=resume, concurrency=concurrency, callbacks=callbacks)
            return collect(grid, search)
