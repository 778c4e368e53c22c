"""The work of each step of a pass, as plain functions of their inputs, each writing its outputs
(atomically) under the pass's directory and returning a JSON-able record of them.

Every step may be redone after a crash: it writes whole files with `raydl.paths.write_atomic`,
and the training run resumes from its last checkpoint (the same run name) or, when it finished,
is not run again. Nothing here touches the registry: `raydl.pipeline.run` carries out decisions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raydl.paths import write_atomic
from raydl.pipeline.gate import NAMES
from raydl.pipeline.spec import FROM_SCRATCH, PipelineSpec
from raydl.spec import JobSpec, apply_overrides, spec_from_dict


def write_parquet(table: pa.Table, out: Path) -> str:
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    write_atomic(out, buf.getvalue().to_pybytes())
    return str(out)


def write_json(out: Path, doc: Any) -> str:
    write_atomic(out, json.dumps(doc, indent=1, allow_nan=False, default=str))
    return str(out)


# ---- drift ------------------------------------------------------------------------------------


def drift(spec: PipelineSpec, champion_dir: str, window_path: str, out: Path) -> dict[str, Any]:
    """`raydl drift check` of the window against the champion's reference profile (and its
    output scores), JSON and HTML reports under `out`."""
    from raydl.drift import CheckSettings, check, load_profile
    from raydl.drift.detectors import FIXED_THRESHOLDS
    from raydl.drift.ood import ModelScorer
    from raydl.drift.report import write_report

    cfg = spec.trigger.drift
    prof = load_profile(Path(champion_dir) / "profile.json")
    fixed = dict(FIXED_THRESHOLDS)
    if cfg.js_threshold is not None:
        fixed["js"] = cfg.js_threshold
    settings = CheckSettings(threshold=cfg.threshold, fixed=fixed, alpha=cfg.alpha, seed=spec.data.seed)
    model = ModelScorer(champion_dir) if prof.model is not None else None  # reported; counts if in verdicts
    d = check(prof, pq.read_table(window_path), model, settings, "local").to_dict()
    html = write_report(d, out / "drift.html", title=f"{spec.name}: drift of window vs champion")
    return {"json": write_json(out / "drift.json", d), "html": str(html), "drifted": d["drifted"],
            "drifted_features": d["drifted_features"], "n_features": len(d["features"]),
            "multivariate": (d.get("multivariate") or {}).get("drifted"),
            "output": [o["name"] for o in d.get("output") or [] if o["drifted"]], "report": d}


# ---- retrain ----------------------------------------------------------------------------------


def job_spec(spec: PipelineSpec, *, run_name: str, storage: Path, train_data: str, champion_dir: str | None) -> JobSpec:
    """The retraining job: the pipeline's job spec on this window's train part, started from the
    champion with the pipeline's continual strategy (or from scratch)."""
    raw = apply_overrides(spec.job_raw(), spec.retrain.overrides)
    raw["run"] = {**(raw.get("run") or {}), "name": run_name, "storage_path": str(storage)}
    raw["data"] = {**(raw.get("data") or {}), "source": train_data, "format": "parquet"}
    r = spec.retrain
    if r.strategy != FROM_SCRATCH and champion_dir is not None:
        raw["finetune"] = {**(raw.get("finetune") or {}), "from": champion_dir}
        raw["continual"] = {"strategy": r.strategy, **r.params}
    return spec_from_dict(raw, origin=f"(pipeline {spec.name}, retrain)")


def retrain(job: JobSpec, address: str | None) -> dict[str, Any]:
    """Train (or resume) the run; a run that already finished is not trained again."""
    from raydl.launch import run_dir, train
    from raydl.model_registry.lineage import wandb_run_id

    rdir = Path(run_dir(job).path)
    done = rdir / "result.json"
    if done.is_file() and (rdir / "model" / "weights.pt").is_file():
        metrics = json.loads(done.read_text())["metrics"]
        model_dir = rdir / "model"
    else:
        result = train(job, address=address)
        metrics, model_dir = result.metrics, Path(result.model_dir)
    keep = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k.startswith(("val_", "test_", "epochs"))}
    return {"model_dir": str(model_dir), "run_dir": str(rdir), "run_name": job.run.name, "metrics": keep,
            "strategy": job.continual.strategy if job.continual else FROM_SCRATCH,
            "started_from": job.finetune.from_ if job.finetune else None, "wandb_run_id": wandb_run_id(rdir)}


# ---- evaluate ---------------------------------------------------------------------------------


def _holdout(paths: list[str]) -> pa.Table | None:
    tables = [pq.read_table(p) for p in paths]
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables) if tables else None


def score(model_dir: str, new: str, old: list[str], who: str) -> dict[str, float]:
    """`who`.new.* and `who`.old.* metrics of a model directory on the two holdouts."""
    from raydl.inference import encode_labels, metrics_on, model_inputs
    from raydl.model_dir import load_model

    model = load_model(model_dir)
    out: dict[str, float] = {}
    for part, table in (("new", _holdout([new])), ("old", _holdout(old))):
        if table is None:
            continue
        m = metrics_on(model, {**model_inputs(model, table), "y": encode_labels(model, table)}, "h")
        out.update({f"{who}.{part}.{n}": float(m[f"h_{n}"]) for n in NAMES if f"h_{n}" in m})
        out[f"rows.{part}"] = table.num_rows
    return out


def with_forgetting(metrics: dict[str, float]) -> dict[str, float]:
    if "champion.old.accuracy" in metrics and "challenger.old.accuracy" in metrics:
        return {**metrics, "forgetting": metrics["champion.old.accuracy"] - metrics["challenger.old.accuracy"]}
    return metrics


def calibrate(model_dir: str, method: str) -> dict[str, Any]:
    """Fit the calibrator on the challenger's own validation split (it is stored in the model dir)."""
    from raydl.calibration.api import calibrate_model_dir

    res = calibrate_model_dir(model_dir, method)
    return {"method": method, "fitted_on": res.get("fitted_on"), "metrics": res.get("metrics")}
