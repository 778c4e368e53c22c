"""The model directory: what a training run leaves behind, written atomically, loadable anywhere.

    weights.pt          best weights (state_dict)
    spec.yaml           the fully resolved job spec
    preprocessing.json  feature names, label, classes, standardisation statistics
    metrics.json        final validation and test metrics, and the per-epoch history
    manifest.json       format version, raydl version, git SHA, dataset fingerprint, seed, package versions

Format versions: 1 (no `format_version` in the manifest) had one fixed set of MLP fields in the
spec's `model:` section, whatever the model; 2 keeps only the named model's own parameters. This
release reads both and refuses a newer one.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import yaml

import raydl
from raydl.batches import DataKind, build_kind
from raydl.data import Preprocessing
from raydl.errors import DataError
from raydl.models import MODELS, build_model
from raydl.paths import dir_swapped_in
from raydl.spec import JobSpec, spec_from_dict, spec_to_yaml
from raydl.tasks import Task, build_task

FILES = ("weights.pt", "spec.yaml", "preprocessing.json", "metrics.json", "manifest.json")
FORMAT_VERSION = 2


def json_safe(obj):
    """JSON-safe: NaN/inf become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(json_safe(obj), indent=2, sort_keys=False))
    os.replace(tmp, path)


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def manifest(spec: JobSpec, fingerprint: str) -> dict:
    versions = {}
    for pkg in ("torch", "ray", "numpy", "pyarrow", "scikit-learn", "wandb", "pydantic"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {
        "format_version": FORMAT_VERSION, "raydl_version": raydl.__version__, "git_sha": git_sha(), "dataset_fingerprint": fingerprint,
        "data_seed": spec.data.seed, "training_seed": spec.training.seed, "python": sys.version.split()[0],
        "packages": versions, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_model_dir(path: Path, weights: dict, spec: JobSpec, prep: Preprocessing, metrics: dict, man: dict) -> Path:
    """Write every file into a temp dir beside `path`, then swap it in with renames."""
    path = Path(path)
    with dir_swapped_in(path) as tmp:
        torch.save(weights, tmp / "weights.pt")
        (tmp / "spec.yaml").write_text(spec_to_yaml(spec))
        (tmp / "preprocessing.json").write_text(json.dumps(prep.to_dict(), indent=2))
        (tmp / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2))
        (tmp / "manifest.json").write_text(json.dumps(man, indent=2))
    return path


@dataclass
class LoadedModel:
    module: torch.nn.Module
    spec: JobSpec
    prep: Preprocessing
    task: Task
    kind: DataKind

    @property
    def features(self) -> list[str]:
        return self.prep.features

    def preprocess(self, X: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.prep.transform(np.asarray(X, dtype=np.float64)))

    @torch.no_grad()
    def outputs(self, X: np.ndarray, batch_size: int = 4096) -> torch.Tensor:
        """Raw features in, the model's outputs out."""
        self.module.eval()
        x = self.preprocess(X)
        return torch.cat([self.module(self.kind.collate({"x": x[i : i + batch_size]})) for i in range(0, len(x), batch_size)])

    def logits(self, X: np.ndarray) -> np.ndarray:
        """A classifier's logits, one per class ([n, C]; a binary model's z becomes [0, z])."""
        return self.task.logits(self.outputs(X)).numpy()


def format_version(path: Path) -> int:
    try:
        man = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return 1
    v = man.get("format_version", 1) if isinstance(man, dict) else 1
    if not isinstance(v, int) or v > FORMAT_VERSION:
        raise DataError(f"{path}: model directory format {v!r} is newer than this raydl reads (formats 1 to {FORMAT_VERSION}); "
                        f"upgrade raydl (this is {raydl.__version__})")
    return v


def _spec_of(path: Path, version: int) -> JobSpec:
    raw = yaml.safe_load((path / "spec.yaml").read_text())
    if version == 1 and isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        # v1 wrote every MLP field for every model: keep those the named model declares.
        model = raw["model"]
        name = model.get("name", "mlp")
        if name in MODELS:
            declared = MODELS.get(name).params.model_fields
            raw = {**raw, "model": {k: v for k, v in model.items() if k == "name" or k in declared}}
    return spec_from_dict(raw, origin=f"in {path / 'spec.yaml'}")


def load_model(path: str | Path) -> LoadedModel:
    path = Path(path)
    missing = [f for f in ("weights.pt", "spec.yaml", "preprocessing.json") if not (path / f).is_file()]
    if missing:
        raise DataError(f"not a raydl model directory: {path} (missing {', '.join(missing)})")
    spec = _spec_of(path, format_version(path))
    prep = Preprocessing.from_dict(json.loads((path / "preprocessing.json").read_text()))
    task = build_task(prep, spec.loss)
    kind = build_kind(prep)
    module = build_model(spec.model, kind, task.n_outputs())
    weights = path / "weights.pt"
    try:
        module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as e:  # empty, truncated, random bytes, a pickle with code, or another architecture
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise DataError(f"{weights}: not loadable as the weights of this model ({why}); "
                        "it must be a tensor state_dict written by raydl train") from None
    module.eval()
    return LoadedModel(module, spec, prep, task, kind)
