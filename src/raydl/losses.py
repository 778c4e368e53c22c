"""Losses, each knowing how many outputs it wants and how to turn logits into predictions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raydl.errors import SpecError
from raydl.registry import Registry
from raydl.spec import LossSpec


@dataclass(frozen=True)
class Loss:
    name: str
    task: str  # "classification" | "regression"
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    binary: bool = False  # one logit + sigmoid instead of one logit per class

    def n_outputs(self, n_classes: int) -> int:
        return 1 if (self.binary or self.task == "regression") else n_classes

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities [B, C] from logits (classification only)."""
        if self.binary:
            p1 = torch.sigmoid(logits.reshape(-1))
            return torch.stack([1 - p1, p1], dim=1)
        return torch.softmax(logits, dim=1)


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


def build_loss(spec: LossSpec, task: str, n_classes: int) -> Loss:
    name = spec.name if spec.name != "auto" else ("cross_entropy" if task == "classification" else "mse")
    loss = LOSSES.get(name, "loss.name")(spec)
    if loss.task != task:
        raise SpecError(f"loss.name: {name!r} is a {loss.task} loss but the data is a {task} task")
    if loss.binary and n_classes != 2:
        raise SpecError(f"loss.name: log_loss is binary but the label has {n_classes} classes; use cross_entropy")
    return loss
