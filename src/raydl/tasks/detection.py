"""Object detection on a grid of anchor boxes, scored by mAP@0.5.

The model (e.g. `grid_detector`) returns one row per anchor box of every grid cell: `[B, P, 9 + C]`
= objectness logit, predicted box (centre x, centre y, width, height, pixels), the anchor's prior
box (centre x, centre y, width, height), then C class logits. `y` holds each image's boxes as rows
of (class id, x0, y0, x1, y1), class -1 padding.

Training (YOLO-style): each ground-truth box is assigned to the anchor of the cell that holds its
centre whose shape overlaps it most; the loss is objectness BCE (assigned anchors 1, the others 0,
positives and negatives weighted equally), a smooth-L1 box loss in the anchor's frame, and the
class cross-entropy of assigned anchors. Scoring: score = sigmoid(objectness) x class probability,
candidates above `MIN_SCORE`, per-class non-maximum suppression, greedy matching at IoU 0.5. The
statistics are additive: per class, the ground-truth count and histograms of true and false
positives over `N_BINS` score bins, so mAP@0.5 over a whole split is exact up to score ties
within 1/N_BINS, whatever the sharding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raydl.boxes import ap_from_counts, match, nms, score_bins
from raydl.errors import DataError
from raydl.spec import LossSpec
from raydl.tasks import TASKS, Task

N_BINS = 1000
MIN_SCORE = 0.01
NMS_IOU = 0.5
MAX_DETECTIONS = 50  # per image, after NMS
IOU_THRESHOLD = 0.5


def to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    return torch.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2, b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]], -1)


def assign(priors: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Index of the anchor each ground-truth box is assigned to: [B, M] from priors [B, P, 4] and gt
    [B, M, 4] (both cx, cy, w, h): among the anchors of the nearest cell centre, the best shape IoU."""
    d = ((priors[:, None, :, :2] - gt[:, :, None, :2]) ** 2).sum(-1)  # [B, M, P]
    nearest = d <= d.min(dim=2, keepdim=True).values + 1e-6
    inter = torch.minimum(priors[:, None, :, 2], gt[:, :, None, 2]) * torch.minimum(priors[:, None, :, 3], gt[:, :, None, 3])
    union = priors[:, None, :, 2] * priors[:, None, :, 3] + (gt[..., 2] * gt[..., 3])[..., None] - inter
    return torch.where(nearest, inter / union, -1.0).argmax(dim=2)


def detection_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out, y = out.float(), y.float()
    valid = y[..., 0] >= 0  # [B, M]
    idx = assign(out[..., 5:9].detach(), to_cxcywh(y[..., 1:5]))  # [B, M]
    b = torch.arange(len(out), device=out.device)[:, None].expand_as(idx)
    bi, pi = b[valid], idx[valid]
    target = torch.zeros(out.shape[:2], device=out.device)
    target[bi, pi] = 1.0
    bce = F.binary_cross_entropy_with_logits(out[..., 0], target, reduction="none")
    pos = target > 0
    obj = bce[pos].mean() if pos.any() else bce.new_zeros(())
    loss = obj + bce[~pos].mean()
    if pos.any():
        p, g = out[bi, pi], to_cxcywh(y[..., 1:5])[valid]
        pw, ph = p[:, 7], p[:, 8]
        box = torch.stack([(p[:, 1] - g[:, 0]) / pw, (p[:, 2] - g[:, 1]) / ph,
                           torch.log(p[:, 3] / g[:, 2]), torch.log(p[:, 4] / g[:, 3])], -1)
        loss = loss + F.smooth_l1_loss(box, torch.zeros_like(box), beta=0.1) * 4 + F.cross_entropy(p[:, 9:], y[..., 0][valid].long())
    return loss


def detections(out: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(boxes [k, 4] x0 y0 x1 y1, scores [k], labels [k]) of each image after per-class NMS."""
    out = out.float()
    prob = torch.sigmoid(out[..., :1]) * torch.softmax(out[..., 9:], dim=-1)  # [B, P, C]
    score, label = prob.max(dim=-1)
    cx, cy, w, h = out[..., 1], out[..., 2], out[..., 3], out[..., 4]
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    result = []
    for i in range(len(out)):
        keep = (score[i] > MIN_SCORE).nonzero().flatten()
        boxes, s, lab = xyxy[i, keep].cpu().numpy(), score[i, keep].cpu().numpy(), label[i, keep].cpu().numpy()
        k = nms(boxes, s, NMS_IOU, lab)[:MAX_DETECTIONS]
        result.append((boxes[k], s[k], lab[k]))
    return result


@dataclass(frozen=True)
class Detection:
    classes: list
    name: str = "detection"

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def n_outputs(self) -> int:
        return 5 + self.n_classes  # per anchor: objectness, 4 box offsets, class logits

    def check_output(self, shape: tuple[int, ...]) -> None:
        """Raise (one line) unless a model's output shape is one row per anchor box."""
        if len(shape) != 3 or shape[-1] != 9 + self.n_classes:
            raise DataError(f"model: a detection task needs [batch, anchors, {9 + self.n_classes}] outputs "
                            f"(a grid detector such as grid_detector), got shape {list(shape)}")

    def loss(self, out: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        self.check_output(tuple(out.shape))
        return detection_loss(out, batch["y"])

    def stats_size(self) -> int:
        return 2 + self.n_classes * (1 + 2 * N_BINS)  # [loss_sum, images] + gt[C] + tp[C, bins] + fp[C, bins]

    def stats(self, out: torch.Tensor, batch: Mapping[str, Any]) -> np.ndarray:
        y = batch["y"].cpu().numpy()
        k = self.n_classes
        gt, tp, fp = np.zeros(k), np.zeros((k, N_BINS)), np.zeros((k, N_BINS))
        for (boxes, scores, labels), rows in zip(detections(out), y):
            rows = rows[rows[:, 0] >= 0]
            for c in range(k):
                g, d = rows[rows[:, 0] == c, 1:], labels == c
                gt[c] += len(g)
                hit = match(boxes[d], scores[d], g, IOU_THRESHOLD)
                bins = score_bins(scores[d], N_BINS)
                tp[c] += np.bincount(bins[hit], minlength=N_BINS)
                fp[c] += np.bincount(bins[~hit], minlength=N_BINS)
        return np.concatenate([[self.loss(out, batch).item() * len(y), len(y)], gt, tp.ravel(), fp.ravel()])

    def summarize(self, s: np.ndarray, prefix: str) -> dict[str, float]:
        k = self.n_classes
        gt = s[2 : 2 + k]
        tp = s[2 + k : 2 + k + k * N_BINS].reshape(k, N_BINS)
        fp = s[2 + k + k * N_BINS :].reshape(k, N_BINS)
        ap = np.array([ap_from_counts(tp[c], fp[c], gt[c]) for c in range(k)])
        found = gt > 0
        m = {"loss": s[0] / max(s[1], 1.0), "map50": float(ap[found].mean()) if found.any() else 0.0,
             "recall50": float(tp[found].sum() / gt[found].sum()) if found.any() else 0.0}
        m.update({f"ap50_{c}": v for c, v in zip(self.classes, ap)})
        return {f"{prefix}_{k_}": float(v) for k_, v in m.items()}

    def metric_names(self) -> list[str]:
        return ["loss", "map50", "recall50", *(f"ap50_{c}" for c in self.classes)]

    def encode_labels(self, values: np.ndarray, where: str) -> np.ndarray:
        y = np.asarray(values, dtype=np.float32)
        if y.ndim != 3 or y.shape[-1] != 5 or (y[..., 0] >= self.n_classes).any():
            raise DataError(f"{where}: detection labels are rows of (class id < {self.n_classes}, x0, y0, x1, y1) per image, class -1 padding")
        return y

    def prediction_columns(self, out: torch.Tensor) -> dict[str, Any]:
        """Each image's detections after NMS: boxes [x0, y0, x1, y1], scores and class names."""
        dets = detections(out)
        return {"boxes": [b.round(2).tolist() for b, _, _ in dets], "scores": [s.tolist() for _, s, _ in dets],
                "labels": [[self.classes[int(i)] for i in lab] for _, _, lab in dets]}

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "classes": self.classes, "metric": "mAP@0.5"}


@TASKS.register("detection")
def _detection(prep: Any, spec: LossSpec) -> Task:
    classes = list(prep.classes)
    if not classes:
        raise DataError("data: a detection dataset must name its classes")
    if spec.name not in ("auto", "detection"):
        from raydl.errors import SpecError

        raise SpecError(f"loss.name: the detection task has its own loss (objectness, box and class terms); "
                        f"leave loss.name auto, not {spec.name!r}")
    return Detection(classes)
