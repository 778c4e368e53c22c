"""scikit-learn's digits (1x8x8 images) cut for metric learning, few-shot, transfer and multi-task.

- `digits_metric`: all ten digits, task `embedding` (the label says which rows are alike).
- `digits_metric_0to4`: digits 0-4 only, task `embedding` (the embedding that few-shot episodes
  on 5-9 use: those classes are never seen in training).
- `digits_0to4`, `digits_5to9`: classification on half of the classes (pretraining, and episodes).
- `digits_5to9_10shot`: digits 5-9 with exactly 10 labelled train images per class (by the same
  content-hashed split `raydl train` makes, so the train split is those 50 rows) and every
  validation/test row of 5-9: the fine-tuning set of transfer learning.
- `digits_multitask`: the images with three targets per row, `y` = [digit, parity (0 even, 1 odd),
  ink (mean pixel intensity / 16, in [0, 1])]; the heads are named in the data's parameters, the
  ink head with its scale (mean 0.305, std 0.034 over all rows: the model predicts it in those units).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raydl.datasets import DATASETS, Arrays, Builtin
from raydl.datasets.bundled import load_digits
from raydl.spec import DataSpec
from raydl.split import assign, row_keys

SHAPE = (1, 8, 8)
SHOTS = 10  # labelled train images per class in digits_5to9_10shot
MULTITASK_HEADS = [
    {"name": "digit", "type": "classification", "classes": list(range(10))},
    {"name": "parity", "type": "classification", "classes": ["even", "odd"]},
    {"name": "ink", "type": "regression", "mean": 0.305, "std": 0.034},
]


def _table(X: np.ndarray, y: np.ndarray) -> pa.Table:
    cols = {f"pixel_{i}": X[:, i] for i in range(X.shape[1])}
    cols["digit"] = y
    return pa.table(cols)


def _classes(lo: int, hi: int):
    def load(spec: DataSpec) -> pa.Table:
        X, y = load_digits()
        keep = (y >= lo) & (y <= hi)
        return _table(X[keep], y[keep])

    return load


def few_labelled(X: np.ndarray, y: np.ndarray, spec: DataSpec, shots: int) -> np.ndarray:
    """Row indices that leave exactly `shots` train rows per class under the split `raydl train`
    makes (raydl.split on each row's content and the data seed), and keep every val/test row."""
    part = assign(row_keys(X, y), spec.seed, (spec.split.train, spec.split.val, spec.split.test))
    order = np.random.default_rng([spec.seed, 10]).permutation(len(y))
    keep = part != 0
    for c in np.unique(y):
        train_rows = order[(part[order] == 0) & (y[order] == c)]
        keep[train_rows[:shots]] = True
    return np.flatnonzero(keep)


def _five_to_nine_few(spec: DataSpec) -> pa.Table:
    X, y = load_digits()
    hi = y >= 5
    X, y = X[hi], y[hi]
    idx = few_labelled(X, y, spec, SHOTS)
    return _table(X[idx], y[idx])


def _multitask(spec: DataSpec) -> Arrays:
    X, y = load_digits()
    targets = np.stack([y, y % 2, X.mean(axis=1) / 16.0], axis=1).astype(np.float32)
    return Arrays({"x": X.reshape(-1, *SHAPE).astype(np.float32), "y": targets}, classes=list(range(10)),
                  params={"heads": MULTITASK_HEADS})


def _register(name: str, load, task: str) -> None:
    DATASETS.register(name)(Builtin(load, "digit", task, "image", SHAPE))


_register("digits_metric", _classes(0, 9), "embedding")
_register("digits_metric_0to4", _classes(0, 4), "embedding")
_register("digits_0to4", _classes(0, 4), "classification")
_register("digits_5to9", _classes(5, 9), "classification")
_register("digits_5to9_10shot", _five_to_nine_few, "classification")
DATASETS.register("digits_multitask")(Builtin(_multitask, "targets", "multitask", "image", SHAPE))
