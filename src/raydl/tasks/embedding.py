"""Metric learning: the model maps an input to an embedding; rows with the same label lie close.

The model returns `[B, D]` embeddings (D = `EMBEDDING_DIM`), L2-normalised by the losses and the
metrics. A model that makes two augmented views of each input while training (`embedder` with
`views: simclr`) returns `[2B, D]`: the first B rows are view 1, the next B view 2.

Losses (`loss.name`), all on normalised embeddings:
- `contrastive` (Siamese pairs, Hadsell et al. 2006): every pair in the batch; d^2 for a pair of
  the same class, max(0, margin - d)^2 otherwise; the mean over positive pairs plus the mean over
  negative pairs (a batch holds far more negatives).
- `triplet` (Schroff et al. 2015): every valid (anchor, positive, negative) in the batch,
  max(0, d(a, p) - d(a, n) + margin), averaged over the triplets that are still active.
- `infonce` (SimCLR's NT-Xent, Chen et al. 2020): with two views, each row's positive is its other
  view and the other 2B - 2 rows are negatives, softmax at `loss.temperature`; labels are not used.
  Without views (validation) the positives are the other rows of the same class (supervised
  contrastive, Khosla et al. 2020), so the loss stays defined.

Metrics: the loss, and `knn_accuracy`: leave-one-out 5-nearest-neighbour accuracy among the rows
scored in one evaluation batch (each rank's part of a split, up to 1024 rows per batch), counted
additively. The split-exact figure (test rows classified by their neighbours among the train
rows) is `raydl.fewshot.knn_accuracy` on the model directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raydl.losses import LOSSES, Loss
from raydl.spec import LossSpec
from raydl.tasks import TASKS, Task, _loss

EMBEDDING_DIM = 64
KNN_K = 5


def _views(z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Normalised embeddings and a label per row; with two views, each label twice."""
    two = len(z) == 2 * len(y)
    return F.normalize(z.float(), dim=1), (torch.cat([y, y]) if two else y), two


def contrastive_loss(z: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    z, y, _ = _views(z, y)
    d = torch.cdist(z, z)
    same = y[:, None] == y[None, :]
    upper = torch.ones_like(same).triu(1)
    pos, neg = same & upper, ~same & upper
    zero = z.sum() * 0.0
    pos_loss = (d[pos] ** 2).mean() if pos.any() else zero
    neg_loss = (F.relu(margin - d[neg]) ** 2).mean() if neg.any() else zero
    return pos_loss + neg_loss


def triplet_loss(z: torch.Tensor, y: torch.Tensor, margin: float, chunk_elems: int = 1 << 24) -> torch.Tensor:
    z, y, _ = _views(z, y)
    d = torch.cdist(z, z)
    same = y[:, None] == y[None, :]
    eye = torch.eye(len(y), dtype=torch.bool, device=z.device)
    pos_mask, neg_mask = same & ~eye, ~same
    total, active = z.sum() * 0.0, 0
    step = max(1, chunk_elems // max(len(y) ** 2, 1))  # anchors at a time: [step, B, B] stays small at any B
    for a in range(0, len(y), step):
        valid = pos_mask[a : a + step, :, None] & neg_mask[a : a + step, None, :]  # [anchor, positive, negative]
        losses = F.relu(d[a : a + step, :, None] - d[a : a + step, None, :] + margin)[valid]
        on = losses > 1e-12
        total, active = total + losses[on].sum(), active + int(on.sum())
    return total / active if active else total


def infonce_loss(z: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    z, y, two = _views(z, y)
    n = len(z)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_p = torch.log_softmax(logits, dim=1)
    if two:
        half = n // 2
        target = torch.cat([torch.arange(half, n), torch.arange(half)]).to(z.device)
        return F.nll_loss(log_p, target)
    pos = (y[:, None] == y[None, :]) & ~eye
    has = pos.any(dim=1)
    if not has.any():
        return z.sum() * 0.0
    per_row = -(log_p.masked_fill(~pos, 0.0).sum(1)) / pos.sum(1).clamp(min=1)
    return per_row[has].mean()


LOSSES.register("contrastive")(lambda s: Loss("contrastive", "embedding", lambda z, y: contrastive_loss(z, y, s.margin)))
LOSSES.register("triplet")(lambda s: Loss("triplet", "embedding", lambda z, y: triplet_loss(z, y, s.margin)))
LOSSES.register("infonce")(lambda s: Loss("infonce", "embedding", lambda z, y: infonce_loss(z, y, s.temperature)))


def knn_predict(ref: np.ndarray, ref_y: np.ndarray, query: np.ndarray, k: int = KNN_K,
                leave_one_out: bool = False) -> np.ndarray:
    """The majority label of each query's k nearest reference rows (Euclidean, on normalised
    embeddings; ties go to the nearest neighbour's label). `leave_one_out`: query i is reference
    row i, not counted as its own neighbour."""
    ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    query = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    d = 2.0 - 2.0 * (query @ ref.T)  # squared distance between unit vectors, without a [Q, R, D] array
    if leave_one_out:
        np.fill_diagonal(d, np.inf)
    k = min(k, len(ref) - (1 if leave_one_out else 0))
    nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
    labels = ref_y[nearest]
    out = np.empty(len(query), dtype=ref_y.dtype)
    for i, row in enumerate(labels):
        values, counts = np.unique(row, return_counts=True)
        best = values[counts == counts.max()]
        out[i] = row[0] if row[0] in best else best[0]
    return out


@dataclass(frozen=True)
class Embedding:
    classes: list
    loss_: Loss
    name: str = "embedding"

    def n_outputs(self) -> int:
        return EMBEDDING_DIM

    def loss(self, out: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.loss_.fn(out.float(), batch["y"])

    def stats_size(self) -> int:
        return 4  # [loss_sum, rows, knn_correct, knn_rows]

    def stats(self, out: torch.Tensor, batch: Mapping[str, Any]) -> np.ndarray:
        y = batch["y"]
        s = np.zeros(4)
        s[0], s[1] = self.loss(out, batch).item() * len(y), len(y)
        if len(y) > 1:
            z = out.float()[: len(y)].cpu().numpy().astype(np.float64)
            y_np = y.cpu().numpy()
            s[2], s[3] = (knn_predict(z, y_np, z, leave_one_out=True) == y_np).sum(), len(y)
        return s

    def summarize(self, s: np.ndarray, prefix: str) -> dict[str, float]:
        return {f"{prefix}_loss": float(s[0] / max(s[1], 1.0)), f"{prefix}_knn_accuracy": float(s[2] / max(s[3], 1.0))}

    def metric_names(self) -> list[str]:
        return ["loss", "knn_accuracy"]

    def encode_labels(self, values: np.ndarray, where: str) -> np.ndarray:
        from raydl.tasks import Classification

        return Classification(self.classes, self.loss_).encode_labels(values, where)

    def prediction_columns(self, out: torch.Tensor) -> dict[str, Any]:
        z = F.normalize(out.float(), dim=1).numpy().astype(np.float64)
        return {"embedding": list(z)}

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "classes": self.classes, "loss": self.loss_.name, "dim": EMBEDDING_DIM}


@TASKS.register("embedding")
def _embedding(prep: Any, spec: LossSpec) -> Task:
    return Embedding(list(prep.classes), _loss(spec, "embedding", "triplet"))
