"""Weights & Biases tracking from world rank 0, with a no-op stand-in when tracking is off.

wandb is imported only when used. The run starts at the first `log` call (after the first
epoch), so its start-up cost never delays the first optimizer step. Offline mode is the default:
run files go under `<run dir>/wandb` and upload later with `wandb sync`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch

from raydl.spec import JobSpec, spec_to_yaml


class Tracker(Protocol):
    def log(self, metrics: dict[str, Any], step: int) -> None: ...
    def finish(self, best_weights: dict | None, prep: Any) -> None: ...


class NullTracker:
    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def finish(self, best_weights: dict | None, prep: Any) -> None:
        pass


class WandbTracker:
    def __init__(self, spec: JobSpec, run_dir: str, manifest: dict) -> None:
        self.spec, self.run_dir, self.manifest, self.run = spec, run_dir, manifest, None

    def _start(self):
        import wandb

        tr = self.spec.tracking
        wandb_dir = Path(self.run_dir)
        wandb_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=tr.project, entity=tr.entity, name=self.spec.run.name, tags=tr.tags,
            dir=str(wandb_dir), mode=tr.mode, reinit="finish_previous",
            config={"spec": self.spec.model_dump(mode="json", by_alias=True), "manifest": self.manifest},
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )
        return self.run

    def log(self, metrics: dict[str, Any], step: int) -> None:
        run = self.run or self._start()
        run.log({k: float(v) for k, v in metrics.items()}, step=step)

    def finish(self, best_weights: dict | None, prep: Any) -> None:
        run = self.run
        if run is None:  # nothing trained in this process (a finished run started again)
            return
        if self.spec.tracking.log_model and best_weights is not None:
            import wandb

            with tempfile.TemporaryDirectory() as d:
                torch.save(best_weights, os.path.join(d, "weights.pt"))
                Path(d, "spec.yaml").write_text(spec_to_yaml(self.spec))
                Path(d, "preprocessing.json").write_text(json.dumps(prep.to_dict()))
                art = wandb.Artifact(f"{self.spec.run.name}-model", type="model")
                art.add_dir(d)
                run.log_artifact(art)
        run.finish()


def start_tracker(spec: JobSpec, run_dir: str, manifest: dict, rank: int) -> Tracker:
    if rank != 0 or spec.tracking.backend == "none":
        return NullTracker()
    return WandbTracker(spec, run_dir, manifest)
