"""How a run ends (`raydl.session`, `raydl.record`, `raydl.trainer`): an embedded Ray's processes stop; a
run's model is written once its last checkpoint is recorded, while Ray Train still ends; a Ray without
the state API gets no placement-group cleaner; a run without Ray Data datasets no dataset manager and no
request to Ray Data's autoscaling coordinator; Ray Train's controller does not import torch."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from clusters import actors_of, ray_env
from ray import cloudpickle
from ray.train.v2._internal.execution.callback import ControllerCallback

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # HoldShutdown runs in Ray Train's controller

XOR = str(Path(__file__).resolve().parents[1] / "configs" / "xor_mlp.yaml")

# The node's kill of the monitor is watched: whether the GCS and raylet were still up when it came.
SCRIPT = """
import json
from ray._private import worker
from raydl.session import ray_session

seen = {}
with ray_session(None, 1) as ends:
    node = worker._global_node
    procs = {t: [i.process for i in infos] for t, infos in node.all_processes.items()}
    kill = node.kill_monitor

    def watched(**kw):
        seen["up_at_monitor_kill"] = sorted(t for t in ("gcs_server", "raylet") if procs[t][0].poll() is None)
        kill(**kw)

    node.kill_monitor = watched
left = sorted(t for t, ps in procs.items() for p in ps if p.poll() is None)
print(json.dumps({"ends": ends, "left": left, **seen}))
"""


def test_an_embedded_rays_autoscaler_monitor_is_stopped_before_the_gcs_it_reports_to(tmp_path):
    env = ray_env(RAYDL_HOME=str(tmp_path / "home"))
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["ends"] is True  # the session started this Ray, and stopped it
    assert out["up_at_monitor_kill"] == ["gcs_server", "raylet"]  # Ray's own order stops the monitor last
    assert out["left"] == []  # every process the session's Ray started is gone


class HoldShutdown(ControllerCallback):
    """Holds Ray Train's controller in its shutdown until `release` exists (at most 60 s)."""

    def __init__(self, release: str) -> None:
        self.release = release

    async def before_controller_shutdown(self) -> None:
        deadline = time.monotonic() + 60
        while not os.path.exists(self.release) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


class TorchInController(ControllerCallback):
    """Once the run is over (its worker group set up and shut down), writes to `out` whether the
    controller's process has imported torch."""

    def __init__(self, out: str) -> None:
        self.out = out

    def after_controller_finish(self, result) -> None:
        with open(self.out, "w") as f:
            f.write(json.dumps("torch" in sys.modules))


class AskCoordinator(ControllerCallback):
    """Once the controller has started (after Ray Train's scaling policy, the first of its callbacks),
    writes to `out` what Ray Data's autoscaling coordinator holds for this run, or that there is none."""

    def __init__(self, out: str) -> None:
        self.out = out

    def after_controller_start(self, train_run_context) -> None:
        import ray

        try:
            coordinator = ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
        except ValueError:
            held = "no coordinator"
        else:
            held = repr(ray.get(coordinator.get_reserved_resources.remote(f"train-{train_run_context.run_id}")))
        Path(self.out).write_text(held)


def test_a_runs_model_is_written_once_its_last_checkpoint_is_recorded_while_ray_train_still_ends(ray_local, tmp_path):
    from raydl import launch
    from raydl.model_dir import manifest
    from raydl.record import EarlyFinish
    from raydl.spec import load_spec
    from raydl.trainer import state_api_answers

    cleaners, managers = len(actors_of("PlacementGroupCleaner")), len(actors_of("DatasetManager"))
    spec = load_spec(XOR, [f"run.storage_path={tmp_path / 'runs'}", "tracking=none", "training.epochs=2"])
    prepared = launch.resolve(spec)
    rdir = launch.run_dir(spec)
    rdir.prepare(True)
    man, release, held = manifest(spec, prepared.fingerprint), tmp_path / "release", tmp_path / "held"
    trainer = launch.make_trainer(spec, prepared, launch.worker_data(spec, prepared), man, rdir, time.time(),
                                  callbacks=(HoldShutdown(str(release)), AskCoordinator(str(held)),
                                             TorchInController(str(tmp_path / "torch"))))
    early = EarlyFinish(lambda c: launch.finish_run(spec, prepared, man, rdir, c), rdir)
    out: dict = {}
    fit = threading.Thread(target=lambda: out.update(result=trainer.fit()))
    fit.start()
    try:
        deadline = time.monotonic() + 120
        while not Path(rdir.path, "result.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        written_while_held = Path(rdir.path, "result.json").exists() and fit.is_alive()
    finally:
        release.touch()
        fit.join(120)
        early.stop()
    assert written_while_held  # the model was written while Ray Train's controller was still ending
    assert Path(early.checkpoint.path).name == Path(out["result"].checkpoint.path).name  # fit()'s own last one
    result = early.outcome()
    assert result.status == "finished" and (Path(result.model_dir) / "weights.pt").is_file()
    # The shared Ray has no dashboard, so no state API: Ray Train's placement-group cleaner, which asks
    # it, was not started (`raydl.trainer`); nor, for a run without Ray Data datasets, its dataset manager.
    assert not state_api_answers()
    assert len(actors_of("PlacementGroupCleaner")) == cleaners
    assert len(actors_of("DatasetManager")) == managers
    # Nor did the run ask Ray Data's autoscaling coordinator for its workers' resources.
    assert held.read_text() in ("no coordinator", "{}")
    # What the controller unpickled is free of torch, so its process never imported it (`raydl.controller`).
    assert json.loads((tmp_path / "torch").read_text()) is False


def test_ray_trains_controller_is_given_gloo_for_cpu_workers_and_nccl_for_gpu_workers(ray_local, tmp_path):
    """raydl's backend config (`raydl.controller.DDPConfig`) in place of Ray Train's `TorchConfig`, which
    picks the same: NCCL when the workers have GPUs. No GPU here: the trainer is only made, not fitted."""
    from raydl import launch
    from raydl.controller import DDPBackend, DDPConfig
    from raydl.model_dir import manifest
    from raydl.spec import load_spec

    for gpu, backend in ((False, "gloo"), (True, "nccl")):
        spec = load_spec(XOR, [f"run.storage_path={tmp_path / 'runs'}", "tracking=none", f"scaling.use_gpu={str(gpu).lower()}"])
        prepared = launch.resolve(spec)
        trainer = launch.make_trainer(spec, prepared, launch.worker_data(spec, prepared), manifest(spec, prepared.fingerprint),
                                      launch.run_dir(spec), time.time())
        assert isinstance(trainer.backend_config, DDPConfig) and trainer.backend_config.backend == backend
        assert trainer.backend_config.backend_cls is DDPBackend and DDPBackend.share_cuda_visible_devices
