"""Elastic weight consolidation (Kirkpatrick et al. 2017), and its online variant (Schwarz et al. 2018).

When an experience's training ends, the diagonal of the empirical Fisher information is computed on
its train data, distributed: each rank sums squared per-sample gradients of the loss over its shard
(at most `fisher_samples` rows), the loop sums them across ranks, and the result is kept with the
model (`extras.pt`), added to the decayed Fisher of the experiences before (`decay` < 1: online
EWC; 1: the Fishers add up). The next experience, started from that model (`finetune.from`),
adds the penalty weight / 2 * sum_i F_i (theta_i - theta*_i)^2 anchored at that model's weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field
from torch import nn

from raydl.continual import OwnRows, previous_extras, register_strategy
from raydl.finetune import source_weights
from raydl.spec import JobSpec, Section

PREFIX = "ewc.fisher."
COUNT = "ewc.count"


class EWCParams(Section):
    weight: float = Field(100.0, gt=0, description="strength of the quadratic anchor (lambda)")
    decay: float = Field(1.0, gt=0, le=1, description="online EWC: the previous Fisher's weight (1: plain sum)")
    fisher_samples: int = Field(2000, ge=1, description="train rows per rank the Fisher is estimated on")


@dataclass
class Anchor:
    """weight / 2 * sum F (theta - theta*)^2 over the parameters that have a Fisher."""

    weight: float
    fisher: dict[str, torch.Tensor]
    anchor: dict[str, torch.Tensor]
    _on: dict = field(default_factory=dict)  # the tensors on the parameters' device, made once

    def __call__(self, model: nn.Module, batch: Any, out: torch.Tensor) -> torch.Tensor:
        total = out.new_zeros(())
        for name, p in model.named_parameters():
            if name not in self.fisher or not p.requires_grad:
                continue
            if name not in self._on:
                self._on[name] = (self.fisher[name].to(p.device), self.anchor[name].to(p.device))
            f, a = self._on[name]
            total = total + (f * (p - a) ** 2).sum()
        return 0.5 * self.weight * total


@dataclass(frozen=True)
class Fisher:
    """Summed squared per-sample gradients of the loss, and the sample count (additive)."""

    samples: int
    decay: float
    previous: dict[str, torch.Tensor]  # the Fisher kept with the model this run started from

    def __call__(self, model: nn.Module, batches: Iterator[Any], task: Any) -> dict[str, torch.Tensor]:
        model.eval()  # dropout off; batch norm uses its running statistics
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        sums = {n: torch.zeros_like(p) for n, p in params.items()}
        n = 0
        for batch in batches:
            for j in range(len(batch["y"])):
                if n >= self.samples:
                    break
                one = {k: v[j : j + 1] for k, v in batch.items()}
                model.zero_grad(set_to_none=True)
                task.loss(model(one), one).backward()
                for name, p in params.items():
                    if p.grad is not None:
                        sums[name] += p.grad.detach() ** 2
                n += 1
        model.zero_grad(set_to_none=True)
        return {**{PREFIX + k: v for k, v in sums.items()}, COUNT: torch.tensor(float(n))}

    def finish(self, reduced: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The mean over every rank's samples, plus the decayed Fisher of the experiences before."""
        count = max(float(reduced.pop(COUNT)), 1.0)
        out = {}
        for key, s in reduced.items():
            prev = self.previous.get(key)
            out[key] = s / count + (self.decay * prev if prev is not None and prev.shape == s.shape else 0)
        return out


@dataclass(frozen=True)
class EWC(OwnRows):
    params: EWCParams
    spec: JobSpec

    def penalties(self, model: nn.Module) -> list:
        fisher = {k[len(PREFIX):]: v for k, v in previous_extras(self.spec).items() if k.startswith(PREFIX)}
        if not fisher:  # the first experience: nothing to hold on to yet
            return []
        return [Anchor(self.params.weight, fisher, source_weights(self.spec.finetune))]

    def consolidations(self) -> list:
        previous = {k: v for k, v in previous_extras(self.spec).items() if k.startswith(PREFIX)}
        return [Fisher(self.params.fisher_samples, self.params.decay, previous)]


@register_strategy("ewc", EWCParams)
def _ewc(p: EWCParams, spec: JobSpec) -> EWC:
    """Elastic weight consolidation: a Fisher-weighted quadratic anchor to the previous weights."""
    return EWC(p, spec)
