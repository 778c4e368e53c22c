"""Learning without forgetting (Li and Hoiem 2016): distillation from the previous model.

The next experience, started from a model (`finetune.from`), adds the penalty
alpha * T^2 * KL(softmax(old / T) || softmax(new / T)), over the classes the previous experiences
trained on, where `old` are the previous model's logits on the same batch (computed in each
worker, no gradient). Which classes those are is counted when an experience ends (a
consolidation: label counts over the train shards, summed across ranks) and kept with the model
(`extras.pt`), added to the counts of the experiences before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field
from torch import nn

from raydl.continual import OwnRows, previous_extras, register_strategy
from raydl.spec import JobSpec, Section

SEEN = "lwf.seen"  # rows per class the models so far trained on


class LwFParams(Section):
    alpha: float = Field(1.0, gt=0, description="weight of the distillation term")
    temperature: float = Field(2.0, gt=0, description="softens both models' probabilities")


def _logits(out: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros_like(out), out], dim=1) if out.shape[-1] == 1 else out


def distillation(new: torch.Tensor, old: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(old / T) || softmax(new / T)), the mean over the batch."""
    t = temperature
    return t * t * nn.functional.kl_div(torch.log_softmax(new / t, dim=1), torch.log_softmax(old / t, dim=1),
                                        reduction="batchmean", log_target=True)


@dataclass
class Distill:
    alpha: float
    temperature: float
    previous: str  # the previous model directory
    classes: torch.Tensor | None  # bool mask of the classes distilled (None: all)
    _old: Any = field(default=None, repr=False)  # the previous model, loaded once on the output's device

    def __call__(self, model: nn.Module, batch: Any, out: torch.Tensor) -> torch.Tensor:
        if self._old is None:
            from raydl.model_dir import load_model

            self._old = load_model(self.previous).module.to(out.device).eval()
            self._old.requires_grad_(False)
        with torch.no_grad():
            old = _logits(self._old(batch)).float()
        new = _logits(out).float()
        if self.classes is not None and self.classes.numel() == new.shape[-1] and self.classes.sum() > 1:
            mask = self.classes.to(new.device)
            new, old = new[:, mask], old[:, mask]
        return self.alpha * distillation(new, old, self.temperature)


@dataclass(frozen=True)
class SeenClasses:
    """Label counts over this rank's train shard (additive), plus the counts kept before."""

    previous: torch.Tensor | None

    def __call__(self, model: nn.Module, batches: Iterator[Any], task: Any) -> dict[str, torch.Tensor]:
        counts = None
        for batch in batches:
            if counts is None:
                with torch.no_grad():
                    width = _logits(model(batch)).shape[-1]
                counts = torch.zeros(width, dtype=torch.float64)
            counts += torch.bincount(batch["y"].long().cpu().reshape(-1), minlength=len(counts))[: len(counts)].double()
        return {SEEN: counts if counts is not None else torch.zeros(0, dtype=torch.float64)}

    def finish(self, reduced: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seen = reduced[SEEN]
        if self.previous is not None and self.previous.shape == seen.shape:
            seen = seen + self.previous
        return {SEEN: seen}


@dataclass(frozen=True)
class LwF(OwnRows):
    params: LwFParams
    spec: JobSpec

    def penalties(self, model: nn.Module) -> list:
        if self.spec.finetune is None:  # the first experience: no previous model
            return []
        seen = previous_extras(self.spec).get(SEEN)
        mask = seen > 0 if seen is not None else None
        return [Distill(self.params.alpha, self.params.temperature, self.spec.finetune.from_, mask)]

    def consolidations(self) -> list:
        return [SeenClasses(previous_extras(self.spec).get(SEEN))]


@register_strategy("lwf", LwFParams)
def _lwf(p: LwFParams, spec: JobSpec) -> LwF:
    """Learning without forgetting: distil the previous model's outputs on the old classes."""
    return LwF(p, spec)
