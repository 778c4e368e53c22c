"""Semantic segmentation: one class per pixel.

The model returns per-pixel logits `[B, C, H, W]`; `y` holds a mask of class ids `[B, H, W]`.
The loss is a classification loss applied per pixel (cross-entropy, or focal). The metric
statistics are additive (summed across ranks and batches): the loss, the pixel counts, and each
class's intersection and union, so the mean IoU of a whole split is exact whatever the sharding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raydl.errors import DataError
from raydl.losses import Loss
from raydl.spec import LossSpec
from raydl.tasks import TASKS, Task, _loss


def iou_counts(pred: np.ndarray, true: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class intersection and union pixel counts of two masks of class ids in [0, k)."""
    cm = np.bincount(true.reshape(-1).astype(np.int64) * k + pred.reshape(-1), minlength=k * k).reshape(k, k)
    inter = np.diag(cm).astype(np.float64)
    return inter, cm.sum(0) + cm.sum(1) - inter


def mean_iou(inter: np.ndarray, union: np.ndarray) -> float:
    """Mean IoU over the classes that occur (in the target or the prediction)."""
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else 0.0


@dataclass(frozen=True)
class Segmentation:
    classes: list
    loss_: Loss
    name: str = "segmentation"

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def n_outputs(self) -> int:
        return self.n_classes  # logits per pixel

    def check_output(self, shape: tuple[int, ...]) -> None:
        """Raise (one line) unless a model's output shape is per-pixel logits for these classes."""
        if len(shape) != 4 or shape[1] != self.n_classes:
            raise DataError(f"model: a segmentation task needs per-pixel logits [batch, {self.n_classes}, height, width] "
                            f"(a model such as unet), got shape {list(shape)}")

    def loss(self, out: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        self.check_output(tuple(out.shape))
        return self.loss_.fn(out.float(), batch["y"])

    def stats_size(self) -> int:
        return 4 + 2 * self.n_classes  # [loss_sum, images, pixels, correct] + intersection[C] + union[C]

    def stats(self, out: torch.Tensor, batch: Mapping[str, Any]) -> np.ndarray:
        y = batch["y"].cpu().numpy()
        pred = out.float().argmax(dim=1).cpu().numpy()
        k = self.n_classes
        inter, union = iou_counts(pred, y, k)
        s = np.zeros(self.stats_size())
        s[0], s[1], s[2], s[3] = self.loss(out, batch).item() * len(y), len(y), y.size, inter.sum()
        s[4 : 4 + k], s[4 + k :] = inter, union
        return s

    def summarize(self, s: np.ndarray, prefix: str) -> dict[str, float]:
        k = self.n_classes
        inter, union = s[4 : 4 + k], s[4 + k :]
        with np.errstate(divide="ignore", invalid="ignore"):
            per_class = np.where(union > 0, inter / union, np.nan)
        m = {"loss": s[0] / max(s[1], 1.0), "pixel_accuracy": s[3] / max(s[2], 1.0), "miou": mean_iou(inter, union)}
        m.update({f"iou_{c}": v for c, v in zip(self.classes, per_class)})
        return {f"{prefix}_{k_}": float(v) for k_, v in m.items()}

    def metric_names(self) -> list[str]:
        return ["loss", "pixel_accuracy", "miou", *(f"iou_{c}" for c in self.classes)]

    def encode_labels(self, values: np.ndarray, where: str) -> np.ndarray:
        y = np.asarray(values)
        if y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() >= self.n_classes)):
            raise DataError(f"{where}: a segmentation mask holds class ids 0..{self.n_classes - 1} ({', '.join(self.classes)})")
        return y.astype(np.int64)

    def prediction_columns(self, out: torch.Tensor) -> dict[str, Any]:
        """The predicted mask of each image, row-major (H*W class ids), and its foreground fraction."""
        pred = out.float().argmax(dim=1).to(torch.int8).cpu().numpy()
        flat = pred.reshape(len(pred), -1)
        return {"mask": list(flat), "foreground_fraction": (flat > 0).mean(axis=1)}

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "classes": self.classes, "loss": self.loss_.name}


@TASKS.register("segmentation")
def _segmentation(prep: Any, spec: LossSpec) -> Task:
    classes = list(prep.classes)
    if len(classes) < 2:
        raise DataError("data: a segmentation dataset must name at least 2 classes (background included)")
    return Segmentation(classes, _loss(spec, "classification", "cross_entropy"))
