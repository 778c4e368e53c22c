"""Evaluation metrics from additive statistics, so per-rank partials can be all-reduced (summed).

Classification keeps a confusion matrix; regression keeps sums of errors and targets. Both are
plain vectors: `stats(...)` builds them, summing merges them, `summarize(...)` reads metrics off.
"""

from __future__ import annotations

import numpy as np


def stats_size(task: str, n_classes: int) -> int:
    # [loss_sum, count] + confusion matrix  |  [loss_sum, count, sse, sae, sum_y, sum_y2]
    return 2 + n_classes * n_classes if task == "classification" else 6


def batch_stats(task: str, n_classes: int, loss_sum: float, pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Additive statistics of one batch; `pred` is class ids (classification) or values."""
    out = np.zeros(stats_size(task, n_classes), dtype=np.float64)
    out[0], out[1] = loss_sum, len(y)
    if task == "classification":
        cm = np.bincount(y.astype(np.int64) * n_classes + pred.astype(np.int64), minlength=n_classes * n_classes)
        out[2:] = cm
    else:
        err = pred.astype(np.float64) - y.astype(np.float64)
        out[2:] = [np.sum(err**2), np.sum(np.abs(err)), np.sum(y), np.sum(y.astype(np.float64) ** 2)]
    return out


def summarize(task: str, n_classes: int, s: np.ndarray, prefix: str, target_std: float = 1.0) -> dict[str, float]:
    """Metrics from summed statistics. Regression errors were summed on standardised targets:
    `target_std` brings MSE and MAE back to the label's units (R² does not depend on the scale)."""
    n = max(s[1], 1.0)
    m = {f"{prefix}_loss": s[0] / n}
    if task == "classification":
        cm = s[2:].reshape(n_classes, n_classes)  # rows: true class, columns: predicted
        tp = np.diag(cm)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
            recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        present = cm.sum(1) > 0  # macro average over classes present in this split
        m.update({
            f"{prefix}_accuracy": tp.sum() / n,
            f"{prefix}_precision": float(precision[present].mean()),
            f"{prefix}_recall": float(recall[present].mean()),
            f"{prefix}_f1": float(f1[present].mean()),
        })
    else:
        sse, sae, sy, sy2 = s[2:]
        sst = sy2 - sy * sy / n
        m.update({
            f"{prefix}_mse": sse / n * target_std**2,
            f"{prefix}_mae": sae / n * target_std,
            f"{prefix}_r2": 1.0 - sse / sst if sst > 0 else 0.0,
        })
    return {k: float(v) for k, v in m.items()}
