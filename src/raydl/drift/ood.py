"""Model-output OOD scores: max softmax probability, predictive entropy, energy, MC Dropout.

``direction`` says which way is out-of-distribution: +1 when a larger score is more OOD,
-1 when a smaller one is (max softmax probability).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SCORES = ("msp", "entropy", "energy")
DIRECTION = {"msp": -1, "entropy": 1, "energy": 1, "mc_entropy": 1, "mc_variance": 1}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of probabilities."""
    p = np.clip(probs, 1e-300, 1.0)
    return -np.sum(probs * np.log(p), axis=1)


def output_scores(logits: np.ndarray) -> dict[str, np.ndarray]:
    """{'msp', 'entropy', 'energy'} per row; energy = -logsumexp(logits) (T = 1)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        from raydl.drift.errors import DriftError

        raise DriftError(f"model logits must be [rows, classes>=2], got shape {z.shape}")
    p = softmax(z)
    mx = z.max(axis=1)
    lse = mx + np.log(np.exp(z - mx[:, None]).sum(axis=1))
    return {"msp": p.max(axis=1), "entropy": entropy(p), "energy": -lse}


def mc_dropout_scores(
    module: Any, x: Any, n_samples: int = 20, seed: int = 0
) -> dict[str, np.ndarray]:
    """MC Dropout: predictive entropy of the mean softmax and mean per-class variance.

    ``module`` is a torch module with dropout layers and ``x`` its (preprocessed) input
    tensor; only the dropout layers are switched to train mode, and restored afterwards.
    """
    import torch

    drops = [m for m in module.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    if not drops:
        from raydl.drift.errors import DriftError

        raise DriftError("MC Dropout needs a model with dropout layers; this one has none")
    was = [m.training for m in drops]
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for m in drops:
            m.train()
        with torch.no_grad():
            probs = np.stack(
                [torch.softmax(module(x), dim=1).double().numpy() for _ in range(n_samples)]
            )
    finally:
        for m, w in zip(drops, was):
            m.train(w)
        torch.random.set_rng_state(gen_state)
    mean = probs.mean(axis=0)
    return {"mc_entropy": entropy(mean), "mc_variance": probs.var(axis=0).mean(axis=1)}


def auroc(in_dist: np.ndarray, out_dist: np.ndarray, direction: int) -> float:
    """AUROC of telling ``out_dist`` from ``in_dist`` with a score of the given direction."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(in_dist)), np.ones(len(out_dist))]
    s = np.r_[in_dist, out_dist] * direction
    return float(roc_auc_score(y, s))


class ModelScorer:
    """Picklable ``raw features -> logits`` callable that loads a raydl model dir lazily.

    Ray workers receive the path, not the weights; each process loads the model once.
    """

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = str(model_dir)
        self._model: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"model_dir": self.model_dir, "_model": None}

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = load_model_dir(self.model_dir)
        return self._model

    @property
    def features(self) -> list[str]:
        return list(self.model.features)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.logits(np.asarray(x)))  # scaled in float64 (`Preprocessing.transform`), then float32


def load_model_dir(path: str | Path) -> Any:
    """``raydl.model_dir.load_model(path)``, with a one-line DriftError when it cannot."""
    from raydl.drift.errors import DriftError

    try:
        from raydl.model_dir import load_model
    except ImportError:
        raise DriftError("--model needs raydl.model_dir, which this install lacks") from None
    from raydl import storage

    if not storage.is_uri(str(path)) and not Path(path).exists():  # a URI is checked as it downloads
        raise DriftError(f"model directory {str(path)!r} does not exist")
    return load_model(path)


LogitsFn = Callable[[np.ndarray], np.ndarray]
