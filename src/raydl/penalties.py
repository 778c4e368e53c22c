"""Penalty terms added to the task's loss, and consolidations computed when training ends.

A penalty is a callable `(model, batch, out) -> scalar tensor`; the loop adds the sum of the
run's penalties to the loss before the backward pass and knows nothing else about them. L1 is
one; a continual-learning strategy (EWC, LwF; `raydl.continual`) adds its own, built from the
model directory the run starts from.

A consolidation runs once, on the best weights, when training ends: `(model, batches, task) ->
{name: tensor}` sums over this rank's train shard (e.g. a diagonal Fisher and its sample count),
summed across ranks by the loop and saved with the model (`extras.pt`) for the next run.
"""

from __future__ import annotations

from collections.abc import Iterator
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


class Consolidation(Protocol):
    def __call__(self, model: nn.Module, batches: Iterator[Any], task: Any) -> dict[str, torch.Tensor]: ...

    def finish(self, reduced: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The sums of every rank (the same on each) -> what is saved with the model."""
        ...


def build_penalties(spec: JobSpec, model: nn.Module) -> list[Penalty]:
    out: list[Penalty] = [L1(spec.optimizer.l1)] if spec.optimizer.l1 else []
    if spec.continual is not None:
        from raydl.continual import build_strategy

        out += build_strategy(spec).penalties(model)
    return out


def build_consolidations(spec: JobSpec) -> list[Consolidation]:
    if spec.continual is None:
        return []
    from raydl.continual import build_strategy

    return build_strategy(spec).consolidations()
