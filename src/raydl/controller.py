"""What raydl hands Ray Train's controller, kept free of torch.

Ray Train's controller is an actor of its own. It unpickles its run's context as it is made: the
backend config, the callbacks, the scaling policy and the train loop's config. With Ray Train's
`TorchConfig` (its module imports torch) and raydl's loop config (`raydl.loop`), that made the
controller import torch, 1.2 CPU-seconds on the path from `fit()` to the workers, in every run
(`bench/RESULTS.md`, 2026-12-06). The controller never runs torch: it only asks the workers to set up
their process group. So raydl gives it:

- `DDPConfig`, a backend config whose backend does on the controller what Ray Train's torch backend
  does (gloo, or NCCL on GPUs; the master's address from rank 0; the torchrun variables; one
  `init_process_group` per rank; the group destroyed at the end) and calls Ray Train's own worker-side
  functions for it on the workers, which import torch anyway;
- the loop's config as an object in the object store (`launch.make_trainer`), which only the
  workers read;
- its scaling policy from this module.
`tests/test_session.py` checks that the controller's process has not imported torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ray.train.backend import Backend, BackendConfig
from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy

log = logging.getLogger("raydl")


@dataclass
class DDPConfig(BackendConfig):
    """Ray Train's `TorchConfig` for raydl: `backend` gloo (CPU workers) or nccl (GPU workers)."""

    backend: str = "gloo"
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return DDPBackend

    @property
    def train_func_context(self):
        # Made in the driver, into the train function that only the workers unpickle.
        from ray.train.torch.config import TorchConfigContextManager

        return TorchConfigContextManager

    @property
    def framework(self):
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TORCH

    def to_dict(self) -> dict:
        return {"backend": self.backend, "init_method": "env", "timeout_s": self.timeout_s}


class DDPBackend(Backend):
    """On the controller: Ray Train's `_TorchBackend` for gloo and NCCL, its `env://` initialisation."""

    share_cuda_visible_devices: bool = True

    def on_start(self, worker_group, backend_config: DDPConfig) -> None:
        import ray
        from ray.train._internal.utils import get_address_and_port

        addr, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_env, addr=addr, port=port)
        ray.get([worker_group.execute_single_async(i, _init_group, backend=backend_config.backend, world_rank=i,
                                                   world_size=len(worker_group), timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config: DDPConfig) -> None:
        import ray
        from ray._private import ray_constants
        from ray.exceptions import GetTimeoutError
        from ray.train.constants import (
            DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
            TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
        )

        futures = worker_group.execute_async(_shutdown, destroy_process_group=len(worker_group) > 1)
        timeout = ray_constants.env_integer(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S)
        try:
            ray.get(futures, timeout=timeout)
        except GetTimeoutError:
            log.warning("raydl: the torch process group's shutdown timed out after %s s", timeout)


# On the workers: Ray Train's own functions, imported there.

def _set_env(addr: str, port: int) -> None:
    import os

    from ray.train.torch.config import _set_torch_distributed_env_vars

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    _set_torch_distributed_env_vars()  # RANK, WORLD_SIZE, LOCAL_RANK, ... as torchrun sets them


def _init_group(backend: str, world_rank: int, world_size: int, timeout_s: int) -> None:
    from ray.train.torch.config import _setup_torch_process_group

    _setup_torch_process_group(backend=backend, world_rank=world_rank, world_size=world_size, init_method="env://",
                               timeout_s=timeout_s)


def _shutdown(destroy_process_group: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy_process_group)


class FixedScalingWithoutCoordinator(FixedScalingPolicy):
    """Ray Train's fixed scaling policy, less its resource requests to Ray Data's autoscaling
    coordinator (it makes none, so it has none to cancel); see `raydl.trainer`."""

    def after_controller_start(self, train_run_context) -> None:
        pass

    def _maybe_send_resource_request(self) -> None:
        pass
