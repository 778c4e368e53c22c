"""`raydl predict` and `raydl evaluate`: a model directory applied to new data, same preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raydl.data import feature_matrix
from raydl.datasets import DATASETS, read_table
from raydl.errors import DataError
from raydl.loop import evaluate_batches
from raydl.model_dir import LoadedModel, load_model
from raydl.paths import output_file, write_atomic
from raydl.spec import DataSpec


def load_data(source: str) -> pa.Table:
    """A built-in dataset name (as trained: same seed and size) or a Parquet/CSV path or URI."""
    table = DATASETS.get(source).load(DataSpec(source=source)) if source in DATASETS else read_table(source, where="DATA")
    if table.num_rows == 0:
        raise DataError(f"DATA: {source!r} has no rows; there is nothing to predict or evaluate")
    return table


def _batches(x: np.ndarray, y: np.ndarray, size: int = 4096):
    for i in range(0, len(y), size):
        yield {"x": torch.from_numpy(x[i : i + size]), "y": torch.from_numpy(y[i : i + size])}


def metrics_on(model: LoadedModel, x_std: np.ndarray, y: np.ndarray, prefix: str) -> dict[str, float]:
    """Metrics of a model on standardised inputs and encoded labels (class ids or targets)."""
    s = evaluate_batches(model.module, _batches(x_std, y), model.task, model.kind, torch.device("cpu"))
    return model.task.summarize(s, prefix)


def encode_labels(model: LoadedModel, table: pa.Table) -> np.ndarray:
    label = model.prep.label
    if label not in table.column_names:
        raise DataError(f"DATA: label column {label!r} not in the data; columns: {table.column_names}")
    return model.task.encode_labels(table.column(label).to_numpy(zero_copy_only=False), "DATA")


def evaluate(model_dir: str | Path, source: str) -> dict[str, float]:
    model = load_model(model_dir)
    table = load_data(source)
    x = model.prep.transform(feature_matrix(table, model.features, where="DATA"))
    return metrics_on(model, x, encode_labels(model, table), "eval")


def predict(model_dir: str | Path, source: str, out: str | Path) -> Path:
    """Write predictions (and class probabilities) to a Parquet file, atomically."""
    out = output_file(out, "--out")  # checked before any work
    model = load_model(model_dir)
    table = load_data(source)
    cols = model.task.prediction_columns(model.outputs(feature_matrix(table, model.features, where="DATA")))
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table(cols), buf)
    return write_atomic(out, buf.getvalue().to_pybytes())
