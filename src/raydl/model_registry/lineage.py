"""What a model directory says about where it came from, read from its own files:

    spec.yaml          the spec (kept whole) and the run's name (the source run)
    manifest.json      dataset fingerprint, git SHA, raydl version, seeds, creation time
    metrics.json       the final metrics (not the per-epoch history)
    calibration.json   the calibrator's method, parameters and what it was fitted on
    profile.json       the drift reference profile (its checksum and size)
    lineage.json       optional: extra lineage a producer adds (a continual run's parent,
                       strategy, replay buffer, Fisher state, ...), kept as given
    ../wandb/          the W&B run of the training run, when the model dir sits in its run dir
                       (a run on an object store keeps it in $RAYDL_HOME/wandb/<run name>)

Pure reads: nothing is written, and a missing optional file gives None.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

LINEAGE_FILE = "lineage.json"
_MANIFEST_KEYS = ("format_version", "raydl_version", "git_sha", "data_seed", "training_seed", "created_at", "python")


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wandb_run_id(run_dir: Path) -> str | None:
    """The id of the newest W&B run under `run_dir/wandb` (offline-run-<time>-<id> or run-<time>-<id>)."""
    runs = sorted(p for p in (run_dir / "wandb").glob("*run-*-*") if p.is_dir() and not p.is_symlink())
    return runs[-1].name.rsplit("-", 1)[1] if runs else None


def run_dir_of(model_dir: Path) -> Path | None:
    """The training run's directory: raydl train writes the model to <run dir>/model, beside
    the run's spec.yaml and result.json."""
    parent = model_dir.resolve().parent
    return parent if (parent / "result.json").is_file() or (parent / "wandb").is_dir() else None


def calibration_summary(model_dir: Path) -> dict | None:
    cal = _json(model_dir / "calibration.json")
    if not isinstance(cal, dict):
        return None
    params = cal.get("params") if cal.get("method") != "isotonic" else None  # curves are kept in the artifact only
    metrics = (_json(model_dir / "metrics.json") or {}).get("calibration", {})
    return {"method": cal.get("method"), "params": params, "fitted_on": cal.get("fitted_on"),
            "metrics": metrics.get("metrics") if isinstance(metrics, dict) else None}


def drift_profile_summary(model_dir: Path) -> dict | None:
    f = model_dir / "profile.json"
    if not f.is_file():
        return None
    prof = _json(f)
    features = prof.get("features") if isinstance(prof, dict) else None
    return {"file": f.name, "sha256": _sha256(f), "bytes": f.stat().st_size,
            "n_rows": prof.get("n_rows") if isinstance(prof, dict) else None,
            "n_features": len(features) if isinstance(features, list | dict) else None}


def read_lineage(model_dir: str | Path, origin: str | None = None) -> dict[str, Any]:
    """The lineage of a model directory: the typed fields of a registry version, and `lineage`
    (manifest facts, the data source, and lineage.json's fields when present). `origin`: the
    object-store URI that `model_dir` (a local copy) was downloaded from."""
    d = Path(model_dir)
    spec_text = (d / "spec.yaml").read_text()
    spec = yaml.safe_load(spec_text) or {}
    manifest = _json(d / "manifest.json") or {}
    metrics = _json(d / "metrics.json") or {}
    run = spec.get("run") if isinstance(spec.get("run"), dict) else {}
    data = spec.get("data") if isinstance(spec.get("data"), dict) else {}
    if origin is None:
        run_dir = run_dir_of(d)
        wandb_id = wandb_run_id(run_dir) if run_dir else None
    else:
        from raydl.runlock import raydl_home

        run_dir = origin.rstrip("/").rsplit("/", 1)[0]
        wandb_id = wandb_run_id(raydl_home() / "wandb" / str(run.get("name"))) if run.get("name") else None
    extra = _json(d / LINEAGE_FILE)
    lineage = {k: manifest.get(k) for k in _MANIFEST_KEYS if k in manifest}
    lineage["data_source"] = data.get("source")
    if isinstance(extra, dict):
        lineage.update(extra)
    return {
        "source_run": run.get("name"),
        "run_dir": str(run_dir) if run_dir else None,
        "spec": spec_text,
        "data_fingerprint": manifest.get("dataset_fingerprint"),
        "metrics": metrics.get("final") if isinstance(metrics.get("final"), dict) else None,
        "calibration": calibration_summary(d),
        "drift_profile": drift_profile_summary(d),
        "wandb_run_id": wandb_id,
        "lineage": lineage,
    }
