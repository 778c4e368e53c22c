"""Penalty terms added to the task's loss: L1 now; EWC and LwF (continual learning) add theirs.

A penalty is a callable `(model, batch, out) -> scalar tensor`; the loop adds the sum of the
run's penalties to the loss before the backward pass and knows nothing else about them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from raydl.spec import JobSpec


class Penalty(Protocol):
    def __call__(self, model: nn.Module, batch: Any, out: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class L1:
    """weight x sum |w| over every trainable weight (biases excluded)."""

    weight: float

    def __call__(self, model: nn.Module, batch: Any, out: torch.Tensor) -> torch.Tensor:
        return self.weight * sum(p.abs().sum() for n, p in model.named_parameters()
                                 if p.requires_grad and not n.endswith("bias"))


def build_penalties(spec: JobSpec) -> list[Penalty]:
    return [L1(spec.optimizer.l1)] if spec.optimizer.l1 else []
