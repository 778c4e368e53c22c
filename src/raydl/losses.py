"""Loss functions by name. A task (`raydl.tasks`) picks one, checks it fits, and calls it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raydl.registry import Registry
from raydl.spec import LossSpec


@dataclass(frozen=True)
class Loss:
    name: str
    task: str  # the task it fits: "classification" | "regression"
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    binary: bool = False  # one logit + sigmoid instead of one logit per class


LOSSES: Registry[Callable[[LossSpec], Loss]] = Registry("loss")


@LOSSES.register("cross_entropy")
def cross_entropy(spec: LossSpec) -> Loss:
    return Loss("cross_entropy", "classification", lambda z, y: F.cross_entropy(z, y, label_smoothing=spec.label_smoothing))


@LOSSES.register("log_loss")
def log_loss(spec: LossSpec) -> Loss:
    def fn(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = y.to(z.dtype)
        if spec.label_smoothing:
            target = target * (1 - spec.label_smoothing) + 0.5 * spec.label_smoothing
        return F.binary_cross_entropy_with_logits(z.reshape(-1), target)

    return Loss("log_loss", "classification", fn, binary=True)


def _regression(name: str, f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    def make(spec: LossSpec) -> Loss:
        return Loss(name, "regression", lambda z, y: f(z.reshape(-1), y.to(z.dtype)))

    return make


LOSSES.register("mse")(_regression("mse", F.mse_loss))
LOSSES.register("mae")(_regression("mae", F.l1_loss))


@LOSSES.register("huber")
def huber(spec: LossSpec) -> Loss:
    return Loss("huber", "regression", lambda z, y: F.huber_loss(z.reshape(-1), y.to(z.dtype), delta=spec.huber_delta))


def focal_loss(z: torch.Tensor, y: torch.Tensor, gamma: float, alpha: float | None) -> torch.Tensor:
    """Softmax focal loss, mean of -alpha_t (1 - p_t)^gamma log p_t over every target (Lin et al. 2017).

    `z` holds one logit per class on dim 1 ([B, C] or per pixel [B, C, H, W]); `y` the class ids.
    `alpha` (optional) weights the targets of every class but class 0 (the positive / minority /
    foreground classes) by alpha and those of class 0 by 1 - alpha. gamma = 0 without alpha is
    cross-entropy."""
    logpt = F.log_softmax(z, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    w = (1.0 - logpt.exp()).clamp(min=0.0) ** gamma
    if alpha is not None:
        w = w * torch.where(y > 0, alpha, 1.0 - alpha)
    return -(w * logpt).mean()


@LOSSES.register("focal")
def focal(spec: LossSpec) -> Loss:
    return Loss("focal", "classification", lambda z, y: focal_loss(z, y, spec.focal_gamma, spec.focal_alpha))
