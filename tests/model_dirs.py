"""Model directories for tests, written by raydl's own writer (`raydl.model_dir.write_model_dir`)
without Ray: the data prepared as `raydl train` prepares it, the model built from the spec, and
(optionally) a few full-batch Adam steps in this process, so a test gets a real, loadable model
directory in well under a second.

    mdir = model_dir(tmp_path / "model", source="iris", steps=50)
"""

from __future__ import annotations

from pathlib import Path

import torch

from raydl.batches import build_kind
from raydl.data import prepare
from raydl.model_dir import manifest, write_model_dir
from raydl.models import build_model
from raydl.spec import spec_from_dict
from raydl.tasks import build_task


def model_dir(path: Path, source: str = "iris", steps: int = 0, run_name: str = "test-run", lr: float = 0.05,
              profile: bool = False, **sections) -> Path:
    """A model directory at `path` for built-in dataset `source`, trained for `steps` full-batch
    steps on its train split (0: the initial weights). `sections` override spec sections;
    `profile`: also write the drift reference profile, as `raydl train` does."""
    raw = {"run": {"name": run_name, "storage_path": str(Path(path).parent)},
           "data": {"source": source}, "model": {"name": "mlp", "hidden": [16]}, "tracking": "none", **sections}
    spec = spec_from_dict(raw)
    prepared = prepare(spec.data)
    task = build_task(prepared.prep, spec.loss)
    torch.manual_seed(0)
    model = build_model(spec.model, build_kind(prepared.prep), task.n_outputs())
    x, y = torch.from_numpy(prepared.train.X), torch.from_numpy(prepared.train.y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model on a busy 2-core machine: one thread is ~10x faster
    try:
        for _ in range(steps):
            opt.zero_grad()
            task.loss(model({"x": x}), {"y": y}).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    metrics = {"final": {"val_accuracy": 0.5, "status": "finished"}, "history": []}
    out = write_model_dir(Path(path), model.state_dict(), spec, prepared.prep, metrics,
                          manifest(spec, prepared.fingerprint))
    if profile:
        from raydl.drift import write_reference_profile

        write_reference_profile(prepared.raw_train, out / "profile.json", features=prepared.prep.features)
    return out
