"""Warm processes for Ray Train's next run.

Each Ray Train run starts its processes anew: a controller actor, a synchronization actor and one
actor per worker, each a Python process that imports Ray, and the workers torch, Ray Train and
raydl's loop. On a 2-core machine that is most of a short run's start (bench/RESULTS.md). Ray puts
an actor into an idle worker process that has the same runtime environment, so raydl has Ray start
those processes before a run asks for them:

- `prestart` asks the driver's node's raylet to start them now, kept alive `KEEP_ALIVE_S`, with the
  runtime environments Ray Train will ask for: its controller's, and its workers' with `ENV` in it
  (the raylet's `PrestartWorkers` call, in Ray's protobuf API; Ray's Python API has no such call).
- every Python worker of a Ray that raydl starts imports this module first (`preload_python_modules`
  in `raydl.cluster.SYSTEM_CONFIG`); in a process whose environment has `ENV`, that imports what a
  training worker needs. A cluster raydl only connects to gets processes that have imported Ray.

raydl calls `prestart` when it starts an embedded Ray for a run (in place of Ray's two generic first
workers), when `raydl cluster up` has started its head, and when a run ends on a Ray that outlives it
(a running cluster, or a series of runs in one driver such as `raydl continual`'s), for the next run.
A Tune trial runs in an actor with a runtime environment of its own (Tune's variables), which Ray
Train's processes inherit: as its training ends, a trial asks for its successor's processes in those
environments (`prestart_next_trial`); the successor runs in the same actor (`raydl.tune.trial`).
Imports are not done ahead in the controller's processes: on two cores that made the next run or
trial start later, not sooner (`bench/RESULTS.md`).
Where the environments differ (another Ray version, a job with a runtime environment of its own) or
a run's workers go to other nodes, those runs start their own processes as before; GPU runs get no
warm workers (`workers_for`). What a run got is in its metrics: `warm_workers`.
"""

from __future__ import annotations

import json
import logging
import os

ENV = "RAYDL_WARM_WORKER"  # in the runtime environment of raydl's Ray Train workers
HELPERS = 2  # processes Ray Train starts beside the workers: its controller and synchronization actor
KEEP_ALIVE_S = 60  # then Ray ends idle processes beyond its soft limit (a node's CPUs)

# This process was started ahead of the run that uses it (by `prestart`: Ray starts it for no job).
prestarted = False


def _preload() -> None:
    import ray.train.torch  # noqa: F401
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401  (DDP imports it when it wraps the model)
    import torch.distributed  # noqa: F401
    from ray.train.v2._internal.execution.worker_group import worker  # noqa: F401

    import raydl.loop  # noqa: F401


def use_ray_threads() -> None:
    """torch's intra-op threads = the CPUs Ray gave this worker. Ray sets OMP_NUM_THREADS to them when
    the worker's task starts; torch reads it when it is imported, which a warm process did before:
    without this, two workers on two cores ran two threads each (the tiny MLP at a third of its speed)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def workers_for(scaling) -> int:
    """How many warm worker processes a run with these `scaling` settings gets: none for GPU workers.
    A process that imports torch before Ray gives it its GPU (CUDA_VISIBLE_DEVICES, set when the
    worker's task starts) could initialise CUDA with every GPU visible; not checked on a GPU yet."""
    return 0 if scaling.use_gpu else scaling.num_workers


def worker_env(extra: dict[str, str] | None = None, preload: bool = True) -> dict[str, str]:
    """The environment raydl gives its Ray Train workers (`RunConfig.worker_runtime_env`)."""
    return {**(extra or {}), ENV: "1"} if preload else dict(extra or {})


def envs(workers_env: dict[str, str], parent: dict[str, str] | None = None) -> tuple[str, str]:
    """The serialized runtime environments of Ray Train's controller and of its workers, as Ray
    2.60 builds them from this process's environment: Ray Train propagates its own variables set
    here, the controller adds one, and Ray merges the environment of the process that starts the
    controller (`parent`'s variables: a Tune trial's) under the controller's and the controller's
    under the workers', writing a merge compactly with sorted keys."""
    from ray._common.constants import RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR
    from ray.runtime_env import RuntimeEnv
    from ray.train.v2._internal.constants import (
        DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE,
        get_env_vars_to_propagate,
    )

    controller = get_env_vars_to_propagate()
    controller.setdefault(RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR, DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
    controller = {**(parent or {}), **controller}
    workers = {**controller, **workers_env}
    return (_compact(controller) if parent else RuntimeEnv(env_vars=controller).serialize()), _compact(workers)


def _compact(env_vars: dict[str, str]) -> str:
    return json.dumps({"env_vars": env_vars}, sort_keys=True, separators=(",", ":"))


def raylet(address: str, workers: int, helpers: int = HELPERS, *, extra: dict[str, str] | None = None,
           trial_vars: dict[str, str] | None = None) -> None:
    """Ask the raylet at `address` (host:port of its node manager) to start `helpers` processes for
    Ray Train's controller and helpers and `workers` for its workers (`extra` in their environment),
    kept alive `KEEP_ALIVE_S`. For a Tune trial's successor, `trial_vars` are the trial's variables,
    merged into the controller's and workers' environments."""
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import (
        common_pb2,
        node_manager_pb2,
        node_manager_pb2_grpc,
        runtime_environment_pb2,
    )

    plan = list(zip(envs(worker_env(extra), trial_vars), (helpers, workers)))
    stub = node_manager_pb2_grpc.NodeManagerServiceStub(init_grpc_channel(address))
    for env, n in plan:
        if n > 0:
            stub.PrestartWorkers(node_manager_pb2.PrestartWorkersRequest(
                language=common_pb2.PYTHON, num_workers=n, keep_alive_duration_secs=KEEP_ALIVE_S,
                runtime_env_info=runtime_environment_pb2.RuntimeEnvInfo(serialized_runtime_env=env)), timeout=10)


def _node_address(ray) -> str:
    node = next(n for n in ray.nodes() if n["NodeID"] == ray.get_runtime_context().get_node_id())
    return f'{node["NodeManagerAddress"]}:{node["NodeManagerPort"]}'


def prestart(workers: int) -> bool:
    """From a connected driver: warm processes for a run with `workers` workers, on this driver's
    node (where Ray Train puts its controller; a single-node cluster's workers too). False when
    they would not match (in a Ray worker, as in a Tune trial: `prestart_next_trial`; in a job with
    a runtime environment) or when there are no workers to warm (`workers_for`)."""
    import ray

    ctx = ray.get_runtime_context()
    if workers < 1 or ctx.worker.mode != ray.SCRIPT_MODE or ctx.get_runtime_env_string() not in ("", "{}"):
        return False
    return _ask(lambda: raylet(_node_address(ray), workers))


def prestart_next_trial(workers: int, workers_env: dict[str, str]) -> bool:
    """From a Tune trial whose run has ended: warm processes for the next trial's run, on this node.
    Tune runs trials in actors with their own runtime environment (Tune's variables), which Ray
    Train's processes inherit, so none matches a process warmed for a driver. False where the
    trial's environment holds more than variables (a job's working directory, packages) or there
    are no workers to warm."""
    import ray

    ctx = ray.get_runtime_context()
    env = ctx.runtime_env
    if workers < 1 or set(env) - {"env_vars"}:
        return False
    return _ask(lambda: raylet(_node_address(ray), workers, extra=workers_env,
                               trial_vars=dict(env.get("env_vars") or {})))


def _ask(call) -> bool:
    try:
        call()
    except Exception as e:  # an optimisation: the run goes on, and its successor starts its own processes
        logging.getLogger("raydl").warning("raydl: could not start warm worker processes (%s)", str(e).splitlines()[0])
        return False
    return True


if os.environ.get(ENV) == "1":  # a Ray Train worker's process (Ray imports this module first)
    prestarted = os.environ.get("RAY_JOB_ID") == "ffffffff"  # the nil job id
    _preload()
