"""`raydl predict` and `raydl evaluate`: a model directory applied to new data, same preprocessing.

When the model directory holds a calibrator (`raydl calibrate`), both apply it: predicted
probabilities, the predicted class and every metric come from the calibrated probabilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raydl.data import feature_matrix
from raydl.datasets import DATASETS, Arrays, read_table
from raydl.errors import DataError
from raydl.model_dir import LoadedModel, load_model
from raydl.paths import output_file, write_atomic
from raydl.spec import DataSpec


def load_data(source: str, trained: DataSpec | None = None) -> pa.Table | Arrays:
    """A built-in dataset name or a Parquet/CSV path or URI. The built-in a model was trained on is
    generated with that run's settings (seed, size, noise), so it holds the same rows."""
    if source in DATASETS:
        data = DATASETS.get(source).load(trained if trained is not None and trained.source == source else DataSpec(source=source))
    else:
        data = read_table(source, where="DATA")
    if len(data) == 0:
        raise DataError(f"DATA: {source!r} has no rows; there is nothing to predict or evaluate")
    return data


def _batches(cols: dict[str, np.ndarray], size: int = 4096):
    n = len(cols["x"])
    for i in range(0, n, size):
        yield {k: torch.as_tensor(v[i : i + size]) for k, v in cols.items()}


@torch.no_grad()
def metrics_on(model: LoadedModel, cols: dict[str, np.ndarray], prefix: str) -> dict[str, float]:
    """Metrics of a model (calibrated, if it has a calibrator) on model-ready columns ("x"
    standardised, "y" class ids or targets)."""
    model.module.eval()
    s = np.zeros(model.task.stats_size())
    for part in _batches(cols):
        batch = model.kind.collate(part)
        s += model.task.stats(model.calibrated(model.module(batch).float()), batch)
    return model.task.summarize(s, prefix)


def model_inputs(model: LoadedModel, data: pa.Table | Arrays) -> dict[str, np.ndarray]:
    """The model-ready input columns of `data` (no target), preprocessed as in training."""
    if isinstance(data, Arrays):
        if model.prep.kind == "tabular" or model.prep.features:
            raise DataError(f"DATA: array data (columns {sorted(data.cols)}) for a model trained on the columns {model.features}")
        cols = {k: v for k, v in data.cols.items() if k != "y"}
        return {**cols, "x": model.prep.transform(cols["x"])}
    if not model.prep.features:
        raise DataError(f"DATA: a table for a model of {model.prep.kind} data; give the built-in dataset it was trained on")
    return {"x": model.prep.transform(feature_matrix(data, model.features, where="DATA"))}


def encode_labels(model: LoadedModel, data: pa.Table | Arrays) -> np.ndarray:
    if isinstance(data, Arrays):
        y = data.cols["y"]
        return y if data.classes is not None else model.task.encode_labels(y, "DATA")  # declared classes: y holds ids
    label = model.prep.label
    if label not in data.column_names:
        raise DataError(f"DATA: label column {label!r} not in the data; columns: {data.column_names}")
    return model.task.encode_labels(data.column(label).to_numpy(zero_copy_only=False), "DATA")


SPLITS = ("all", "train", "val", "test")


def evaluate(model_dir: str | Path, source: str, split: str = "all") -> dict[str, float]:
    """Metrics on every row of `source`, or (`split`) on one split of the data the model was
    trained on, rebuilt with the run's own seed (the content-hashed split gives the same rows)."""
    model = load_model(model_dir)
    if split != "all":
        if source != model.spec.data.source:
            raise DataError(f"--split {split}: the splits are those of the data the model was trained on "
                            f"({model.spec.data.source!r}), not {source!r}; use --split all for other data")
        from raydl.data import prepare

        part = getattr(prepare(model.spec.data), split)
        if len(part) == 0:
            raise DataError(f"--split {split}: the {split} split of {source!r} has no rows")
        return metrics_on(model, part.cols, split)
    data = load_data(source, model.spec.data)
    return metrics_on(model, {**model_inputs(model, data), "y": encode_labels(model, data)}, "eval")


def predict(model_dir: str | Path, source: str, out: str | Path) -> Path:
    """Write predictions (and class probabilities) to a Parquet file, atomically."""
    out = output_file(out, "--out")  # checked before any work
    model = load_model(model_dir)
    cols = model.task.prediction_columns(model.calibrated(model.forward(model_inputs(model, load_data(source, model.spec.data)))))
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table(cols), buf)
    return write_atomic(out, buf.getvalue().to_pybytes())
