"""The Ray Train trainer raydl runs: `TorchTrainer`, less its placement-group cleaner on a Ray whose
state API does not answer (raydl's own: an embedded Ray and `raydl cluster up`'s head have no dashboard).

Ray Train V2 starts a detached `PlacementGroupCleaner` actor for every run. Once a second it asks the
state API whether the run's controller is alive, to remove the run's placement group if the controller
dies while its driver lives on. The dashboard serves that API; without it every query fails (the
cleaner logs "Failed to query Ray Train Controller actor state ... Continuing to monitor" each second)
and the cleaner can never clean. It still costs every run a process, 0.4 s at the start (the
controller waits for it to register the run's group) and 1 s at the end (the controller's stop waits
for the cleaner's thread to finish its retried query), on 2 cores (`bench/RESULTS.md`). Ray Train has
no switch for it, so raydl overrides the private method that lists Ray Train's default callbacks; a Ray
that renames it starts the cleaner again, and `tests/test_session.py` fails. The fix belongs in Ray:
start no cleaner when the state API does not answer, and wake the cleaner's thread when it is stopped.

A run without Ray Data datasets (raydl's in-memory path) also leaves out Ray Train's datasets
callback, which starts a `DatasetManager` actor for every run, datasets or not: one more process,
started while the run starts (a worker's `dataset_shard_provider` is optional in Ray Train).

Nor does such a run register its workers with Ray Data's autoscaling coordinator. Ray Train's fixed
scaling policy does that when its controller starts, waiting for the answer; on a fresh Ray (the
embedded one) that first starts the coordinator, a detached actor in a process of its own that
imports Ray Data: 0.94 s in the controller's log, on the path to the first step (the embedded digits
MLP's first step 11.45 -> 10.77 s, medians of 6 alternating runs, `bench/RESULTS.md`). The
coordinator shares a cluster between Ray Data executions and Ray Train runs and passes their requests
on to Ray's autoscaler; a run without Ray Data still has its placement group, which an autoscaler
sees, so only the early request is lost. Runs with datasets register as before.

What the controller unpickles (its backend config, this policy, the loop's config) is kept free of
torch: `raydl.controller`.
"""

from __future__ import annotations

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy

from raydl.controller import FixedScalingWithoutCoordinator


class Trainer(TorchTrainer):
    """`TorchTrainer` less the default callbacks this run cannot use."""

    cleaner = True  # False where the state API does not answer

    def _create_default_callbacks(self):
        unused = (() if self.cleaner else (PlacementGroupCleanerCallback,)) + (() if self.datasets else (DatasetsCallback,))
        return [c for c in super()._create_default_callbacks() if not isinstance(c, unused)]

    def _initialize_and_run_controller(self, **kwargs):
        if not self.datasets and type(kwargs.get("scaling_policy")) is FixedScalingPolicy:
            kwargs["scaling_policy"] = FixedScalingWithoutCoordinator(self.scaling_config)
        return super()._initialize_and_run_controller(**kwargs)


class TrainerWithoutCleaner(Trainer):
    cleaner = False


def state_api_answers() -> bool:
    """Whether the connected Ray's state API (the dashboard's) answers: the address the dashboard
    registered, then one small query (a few ms either way)."""
    from ray._private import ray_constants
    from ray.experimental import internal_kv
    from ray.util.state import list_nodes

    try:
        url = internal_kv._internal_kv_get(ray_constants.DASHBOARD_ADDRESS, namespace=ray_constants.KV_NAMESPACE_DASHBOARD)
        if not url:
            return False
        list_nodes(address=f"http://{url.decode()}", limit=1, timeout=2, raise_on_missing_output=False)
    except Exception:
        return False
    return True


def trainer_class() -> type[Trainer]:
    return Trainer if state_api_answers() else TrainerWithoutCleaner
