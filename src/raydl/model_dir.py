"""The model directory: what a training run leaves behind, written atomically, loadable anywhere.

    weights.pt          best weights (state_dict)
    spec.yaml           the fully resolved job spec
    preprocessing.json  feature names, label, classes, standardisation statistics
    metrics.json        final validation and test metrics, and the per-epoch history
    manifest.json       format version, raydl version, git SHA, dataset fingerprint, seed, package versions
    calibration.json    optional (`raydl calibrate`): a fitted calibrator as plain JSON; predict and
                        evaluate apply it to the model's logits

Format versions: 1 (no `format_version` in the manifest) had one fixed set of MLP fields in the
spec's `model:` section, whatever the model; 2 keeps only the named model's own parameters; 3
names the data kind and sample shape in preprocessing.json (`kind`, `shape`, `kind_params`) where
1 and 2 had `image_shape`. This release reads all three and refuses a newer one.
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
from raydl.calibration.calibrators import Calibrator
from raydl.data import Preprocessing
from raydl.errors import DataError
from raydl.models import MODELS, build_model
from raydl.paths import dir_swapped_in
from raydl.spec import JobSpec, spec_from_dict, spec_to_yaml
from raydl.tasks import Task, build_task

FILES = ("weights.pt", "spec.yaml", "preprocessing.json", "metrics.json", "manifest.json")
CALIBRATION_FILE = "calibration.json"
FORMAT_VERSION = 3


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


def write_model_files(d: Path, weights: dict, spec: JobSpec, prep: Preprocessing, metrics: dict, man: dict) -> None:
    """The files of a model directory, into the (new, private) directory `d`."""
    torch.save(weights, d / "weights.pt")
    (d / "spec.yaml").write_text(spec_to_yaml(spec))
    (d / "preprocessing.json").write_text(json.dumps(prep.to_dict(), indent=2))
    (d / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2))
    (d / "manifest.json").write_text(json.dumps(man, indent=2))


def write_model_dir(path: Path, weights: dict, spec: JobSpec, prep: Preprocessing, metrics: dict, man: dict) -> Path:
    """Write every file into a temp dir beside local `path`, then swap it in with renames."""
    path = Path(path)
    with dir_swapped_in(path) as tmp:
        write_model_files(tmp, weights, spec, prep, metrics, man)
    return path


def inference_latency(model: LoadedModel, cols: dict[str, np.ndarray], repeats: int = 20,
                      budget_s: float = 0.05) -> dict[str, float]:
    """Per-sample CPU inference latency of `model` on model-ready inputs, at batch 1 and batch 256
    (median of up to `repeats` timed calls after a warm-up, at least 3, stopping once `budget_s` is
    spent), in milliseconds. It runs at the end of every `raydl train`, while Ray tears the run's
    processes down on the same cores: 20 calls of a small MLP took 0.25-0.6 s there (10 ms alone)."""
    import time

    out = {}
    n = len(cols["x"])
    for size in (1, 256):
        batch = {k: torch.as_tensor(v[: min(size, n)]) for k, v in cols.items()}
        m = len(batch["x"])
        with torch.no_grad():
            model.module(model.kind.collate(batch))
            times: list[float] = []
            while len(times) < repeats and (len(times) < 3 or sum(times) < budget_s):
                t0 = time.perf_counter()
                model.module(model.kind.collate(batch))
                times.append(time.perf_counter() - t0)
        out[f"latency_ms_per_sample_batch{size}"] = float(np.median(times)) * 1000 / m
    return out


@dataclass
class LoadedModel:
    module: torch.nn.Module
    spec: JobSpec
    prep: Preprocessing
    task: Task
    kind: DataKind
    calibrator: Calibrator | None = None

    @property
    def features(self) -> list[str]:
        return self.prep.features

    def preprocess(self, X: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.prep.transform(np.asarray(X, dtype=np.float64)))

    def outputs(self, X: np.ndarray, batch_size: int = 4096) -> torch.Tensor:
        """Raw features in, the model's outputs out (uncalibrated)."""
        return self.forward({"x": self.preprocess(X)}, batch_size)

    @torch.no_grad()
    def forward(self, cols: dict, batch_size: int = 4096) -> torch.Tensor:
        """Model-ready columns (as a split holds them, without the target) in, outputs out (uncalibrated)."""
        self.module.eval()
        cols = {k: torch.as_tensor(v) for k, v in cols.items()}
        n = len(cols["x"])
        return torch.cat([self.module(self.kind.collate({k: v[i : i + batch_size] for k, v in cols.items()}))
                          for i in range(0, n, batch_size)])

    def calibrated(self, out: torch.Tensor) -> torch.Tensor:
        """The outputs with the calibrator applied (unchanged without one): outputs whose
        `task.logits` are the calibrated log-probabilities, so the task's loss, metrics and
        predictions read them as they read any logits. A one-logit binary model stays one logit."""
        if self.calibrator is None:
            return out
        log_probs = torch.from_numpy(self.calibrator.log_probs(self.task.logits(out).double().numpy()))
        if self.task.n_outputs() == 1:
            return (log_probs[:, 1] - log_probs[:, 0]).reshape(-1, 1).float()
        return log_probs.float()

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
    """A model directory, local or on an object store (downloaded and checked against its
    `_COMPLETE` marker first: a half-published directory is refused)."""
    from raydl import storage

    if storage.is_uri(str(path)):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="raydl-model-") as tmp:
            return load_model(storage.open_dir(str(path), Path(tmp)))
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
    from raydl.quantize import quantization_of, rebuild

    quantized = quantization_of(path)
    try:
        if quantized is not None:  # int8 / half-precision weights stored as plain tensors (raydl quantize)
            module = rebuild(module, quantized, weights, kind.collate({"x": torch.zeros(1, *prep.sample_shape)})["x"])
        else:
            module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except DataError:
        raise
    except Exception as e:  # empty, truncated, random bytes, a pickle with code, or another architecture
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise DataError(f"{weights}: not loadable as the weights of this model ({why}); "
                        "it must be a tensor state_dict written by raydl train") from None
    module.eval()
    return LoadedModel(module, spec, prep, task, kind, read_calibrator(path))


def read_calibrator(path: Path) -> Calibrator | None:
    """The model directory's calibrator, or None when it has none."""
    f = Path(path) / CALIBRATION_FILE
    if not f.is_file():
        return None
    try:
        raw = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{f}: not readable as JSON ({e}); run `raydl calibrate` again to rewrite it") from None
    return Calibrator.from_dict(raw, str(f))
