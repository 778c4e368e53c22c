"""Calibrate a model directory: fit a calibrator on its validation split (or on given labelled
data), store it in the directory, and report calibration metrics before and after.

    from raydl.calibration.api import calibrate_model_dir
    result = calibrate_model_dir("runs/digits-mlp/model", "temperature")

By default the validation split is rebuilt from the directory's spec.yaml with
`raydl.data.prepare` (the same seed and content-hashed split as training, so the same rows);
the data must still hash to the manifest's dataset fingerprint. The test split is only scored,
never fitted on. The directory is rewritten as a whole (a temp dir swapped in by renames), so a
reader sees it with the new calibrator, metrics.json, reliability.png and calibration.html, or
with none of them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from raydl.calibration import CalibrationError
from raydl.calibration.calibrators import METHODS, Calibrator, check_fit, fit, log_softmax
from raydl.calibration.metrics import calibration_metrics, calibration_stats
from raydl.errors import OutputError
from raydl.model_dir import CALIBRATION_FILE, LoadedModel, json_safe, load_model
from raydl.paths import dir_swapped_in, writable

REPORT_FILE, DIAGRAM_FILE = "calibration.html", "reliability.png"


def check_calibration(method: str, prepared, where: str = "training.calibration") -> None:
    """Before training: can `method` calibrate a model of this prepared data on its validation
    split? One CalibrationError line if not (a regression task, Platt on more than two classes,
    isotonic on too few rows). For a streamed source (`raydl.ingest.Streamed`, statistics done)
    the rows of each class are not known on the driver: the row count is checked when fitting."""
    prep = prepared.prep
    if prep.task != "classification":
        raise CalibrationError(f"{where}: {method}: the data is a regression task (label {prep.label!r}); "
                               "calibration is for classifiers; set it to none")
    val = getattr(prepared, "val", None)  # None when streamed: only what does not depend on the rows
    check_fit(method, val.y if val is not None else None, len(prep.classes), "the validation split", flag=where)


Cols = dict[str, np.ndarray]  # model-ready columns of one split: "x" (standardised), "y" (class ids), ...


def _logits(model: LoadedModel, cols: Cols) -> np.ndarray:
    return model.task.logits(model.forward({k: v for k, v in cols.items() if k != "y"})).double().numpy()


def _collect(ds) -> Cols:
    """A Ray Data split of model-ready rows, in memory."""
    parts = list(ds.iter_batches(batch_format="numpy", batch_size=8192))
    return {k: np.concatenate([np.asarray(b[k]) for b in parts]) for k in parts[0]} if parts else {}


def _own_splits(model: LoadedModel, path: Path, prepared=None) -> dict[str, Cols]:
    """The model's validation and test splits, rebuilt as in training (never fitted on: test):
    in memory, or through Ray Data for a streamed source (`raydl.ingest`)."""
    from raydl.ingest import Streamed, plan

    if prepared is None:
        streamed = plan(model.spec)
        if streamed is not None:
            from raydl.launch import ray_session

            with ray_session(None):
                return _own_splits(model, path, streamed.with_stats(model.spec))
        from raydl.data import prepare

        prepared = prepare(model.spec.data)
    try:
        trained_on = json.loads((path / "manifest.json").read_text()).get("dataset_fingerprint")
    except (OSError, ValueError, AttributeError):
        trained_on = None
    if trained_on and trained_on != prepared.fingerprint:
        raise CalibrationError(f"{path}: the data in its spec.yaml ({model.spec.data.source!r}) has changed since "
                               f"training (fingerprint {prepared.fingerprint}, trained on {trained_on}), so its "
                               "validation split cannot be rebuilt; give labelled data with --data")
    if isinstance(prepared, Streamed):
        parts = prepared.datasets(model.spec)
        return {k: _collect(parts[k]) for k in ("val", "test") if k in parts}
    out = {"val": prepared.val.cols}
    if len(prepared.test):
        out["test"] = prepared.test.cols
    return out


def _given(model: LoadedModel, data: str) -> dict[str, Cols]:
    from raydl.inference import encode_labels, load_data, model_inputs

    loaded = load_data(data)
    return {"data": {**model_inputs(model, loaded), "y": encode_labels(model, loaded)}}


def _write(path: Path, files: dict[str, bytes]) -> None:
    """Rewrite model directory `path` with `files` added or replaced: the other files are
    hard-linked (copied where links fail) into a temp dir beside it, which is swapped in."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    with dir_swapped_in(path) as tmp:
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        for f in path.iterdir():
            if f.name in files:
                continue
            if f.is_dir():
                shutil.copytree(f, tmp / f.name, copy_function=link)
            else:
                link(str(f), str(tmp / f.name))
        for name, data in files.items():
            (tmp / name).write_bytes(data)


def calibrate_model_dir(model_dir: str | os.PathLike, method: str = "temperature", data: str | None = None,
                        *, prepared=None) -> dict:
    """Fit `method` (temperature | platt | isotonic) on the model's validation split, or on the
    labelled `data` (a Parquet/CSV path or URI, or a built-in dataset name), and store it.
    `prepared`: the run's `raydl.data.Prepared` (or `raydl.ingest.Streamed`), when the caller
    has it (the end of `raydl train`), so the data is not read again. A model directory on an
    object store is downloaded (checked against its marker), calibrated, and published back.
    Returns what was fitted and the metrics before and after, per split."""
    from raydl import storage

    METHODS.get(method, "--method")
    if storage.is_uri(str(model_dir)):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="raydl-calibrate-") as tmp:
            local = storage.open_dir(str(model_dir), Path(tmp) / "model")
            result = calibrate_model_dir(local, method, data, prepared=prepared)
            storage.publish_dir(local, str(model_dir))
        return {**result, "model_dir": str(model_dir)}
    path = Path(model_dir)
    model = load_model(path)
    if model.prep.task != "classification":
        raise CalibrationError(f"{path}: a regression model (label {model.prep.label!r}) has no class probabilities "
                               "to calibrate; calibration is for classifiers")
    if not writable(path.parent):  # the directory is rewritten beside itself; checked before any work
        raise OutputError(f"MODEL_DIR: cannot rewrite {path}: its folder {path.parent} is not writable")
    splits = _given(model, data) if data is not None else _own_splits(model, path, prepared)
    fit_split = "data" if data is not None else "val"
    logits = {name: _logits(model, cols) for name, cols in splits.items()}
    y_fit = splits[fit_split]["y"]
    fitted_on = {"source": str(data) if data is not None else "the validation split", "rows": int(len(y_fit)),
                 "data_fingerprint": _fingerprint(splits[fit_split]["x"], y_fit)}
    cal = fit(method, logits[fit_split], y_fit, fitted_on)

    metrics, stats = {}, {}
    for name, cols in splits.items():
        y = cols["y"]
        before, after = log_softmax(logits[name]), cal.log_probs(logits[name])
        metrics[name] = {"before": calibration_metrics(before, y), "after": calibration_metrics(after, y)}
        stats[name] = (calibration_stats(before, y), calibration_stats(after, y))
    result = {"model_dir": str(path), "method": method, "params": cal.params if method != "isotonic" else {},
              "fitted_on": fitted_on, "metrics": metrics, "diagram_split": fit_split,
              "files": [CALIBRATION_FILE, "metrics.json", DIAGRAM_FILE, REPORT_FILE]}
    _write(path, _files(path, cal, result, stats[fit_split]))
    return result


def _fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    from raydl.data import fingerprint

    return fingerprint(x, y)


def _files(path: Path, cal: Calibrator, result: dict, fit_stats: tuple[np.ndarray, np.ndarray]) -> dict[str, bytes]:
    from raydl.calibration.report import html_report, reliability_png

    try:
        metrics = json.loads((path / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {}
    if not isinstance(metrics, dict):
        metrics = {}
    metrics["calibration"] = {k: result[k] for k in ("method", "params", "fitted_on", "metrics")}
    metrics["calibration"]["calibrated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    png = reliability_png(*fit_stats, title=f"{path} ({result['method']}, {result['diagram_split']})")
    return {
        CALIBRATION_FILE: json.dumps(cal.to_dict(), indent=1).encode(),
        "metrics.json": json.dumps(json_safe(metrics), indent=2).encode(),
        DIAGRAM_FILE: png,
        REPORT_FILE: html_report(result, png).encode(),
    }
