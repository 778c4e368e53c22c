"""Calibration metrics as pure functions over plain numpy arrays.

The equal-width-bin metrics come from additive statistics: per bin the number of predictions,
the sum of their confidences and the number of correct ones, plus the NLL and Brier sums. Parts
computed on different ranks or batches are summed (one all-reduce), then read off:

    s = calibration_stats(log_probs, y)          # float64 vector of size stats_size()
    summarize(s_rank0 + s_rank1)                 # {"ece", "mce", "brier", "nll", "accuracy"}

Bins: `n_bins` equal-width bins over [0, 1]; bin b holds confidences in [b/n, (b+1)/n), and a
confidence of exactly 1.0 is counted in the last bin. (torchmetrics' `CalibrationError` gives
1.0 a bin of its own; the two agree whenever no confidence is exactly 1.0.)

Adaptive-binning ECE needs the confidences themselves (its bins are quantiles), so it is
computed where all predictions are at hand: `adaptive_ece(confidences, correct)`.
"""

from __future__ import annotations

import numpy as np

N_BINS = 15
_HEAD = 3  # [count, nll_sum, brier_sum]


def stats_size(n_bins: int = N_BINS) -> int:
    return _HEAD + 3 * n_bins


def bin_index(confidences: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """The equal-width bin of each confidence; 1.0 goes to the last bin."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, confidences, side="right") - 1, 0, n_bins - 1)


def calibration_stats(log_probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Additive statistics of predictions `log_probs` ([n, C] log-probabilities) against class
    ids `y` ([n])."""
    log_probs = np.asarray(log_probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    s = np.zeros(stats_size(n_bins))
    n = len(y)
    if n == 0:
        return s
    probs = np.exp(log_probs)
    pred = probs.argmax(axis=1)
    conf = probs[np.arange(n), pred]
    correct = (pred == y).astype(np.float64)
    onehot = np.zeros_like(probs)
    onehot[np.arange(n), y] = 1.0
    s[0] = n
    s[1] = -log_probs[np.arange(n), y].sum()
    s[2] = ((probs - onehot) ** 2).sum()
    b = bin_index(conf, n_bins)
    s[_HEAD:_HEAD + n_bins] = np.bincount(b, minlength=n_bins)
    s[_HEAD + n_bins:_HEAD + 2 * n_bins] = np.bincount(b, weights=conf, minlength=n_bins)
    s[_HEAD + 2 * n_bins:] = np.bincount(b, weights=correct, minlength=n_bins)
    return s


def bins(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean confidence, accuracy) per bin; empty bins have mean confidence and accuracy 0."""
    s = np.asarray(s, dtype=np.float64)
    n_bins = (len(s) - _HEAD) // 3
    count = s[_HEAD:_HEAD + n_bins]
    safe = np.where(count > 0, count, 1.0)
    conf = np.where(count > 0, s[_HEAD + n_bins:_HEAD + 2 * n_bins] / safe, 0.0)
    acc = np.where(count > 0, s[_HEAD + 2 * n_bins:] / safe, 0.0)
    return count, conf, acc


def ece(s: np.ndarray) -> float:
    """Expected calibration error: the bins' |accuracy - confidence| weighted by their share."""
    count, conf, acc = bins(s)
    total = count.sum()
    return float(np.sum(np.abs(acc - conf) * count) / total) if total > 0 else 0.0


def mce(s: np.ndarray) -> float:
    """Maximum calibration error: the largest |accuracy - confidence| over the non-empty bins."""
    count, conf, acc = bins(s)
    gaps = np.abs(acc - conf)[count > 0]
    return float(gaps.max()) if len(gaps) else 0.0


def summarize(s: np.ndarray) -> dict[str, float]:
    """ECE, MCE, Brier score (sum over classes of squared error, mean over rows), NLL, accuracy."""
    s = np.asarray(s, dtype=np.float64)
    n = max(s[0], 1.0)
    n_bins = (len(s) - _HEAD) // 3
    return {"ece": ece(s), "mce": mce(s), "brier": float(s[2] / n), "nll": float(s[1] / n),
            "accuracy": float(s[_HEAD + 2 * n_bins:].sum() / n)}


def adaptive_ece(confidences: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE over equal-mass bins: the predictions sorted by confidence and cut into `n_bins`
    groups of (nearly) equal size (sizes differ by at most one, the larger ones first)."""
    conf = np.asarray(confidences, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    n = len(conf)
    if n == 0:
        return 0.0
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for part in np.array_split(order, min(n_bins, n)):
        total += abs(ok[part].mean() - conf[part].mean()) * len(part)
    return float(total / n)


def top_label(log_probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence of the predicted class, 1.0 where that prediction is right)."""
    probs = np.exp(np.asarray(log_probs, dtype=np.float64))
    pred = probs.argmax(axis=1)
    return probs[np.arange(len(pred)), pred], (pred == np.asarray(y)).astype(np.float64)


def calibration_metrics(log_probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> dict[str, float]:
    """Every calibration metric of one set of predictions, adaptive ECE included."""
    m = summarize(calibration_stats(log_probs, y, n_bins))
    m["adaptive_ece"] = adaptive_ece(*top_label(log_probs, y), n_bins=n_bins)
    return m
