"""A multi-head MLP for task-incremental learning: a shared trunk and one output head per task.

The input's last feature is the task id (an integer, not standardised: `data.standardize: none`);
the rest go through the trunk. Task t's head scores classes t*k .. t*k+k-1 (k = classes_per_task,
as `split_digits_tasks` lays them out); the other classes get a large negative logit, so the
ordinary cross-entropy, accuracy and predictions are those of the task's own head. The heads of
other tasks get zero gradients (not none), so DDP finds every parameter used at every step.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from raydl.batches import DataKind, model_input
from raydl.models import in_features, register_model
from raydl.models.mlp import ACTIVATIONS, MLPParams, init_weights

MASKED = -1e4  # the logit of a class outside the sample's task (finite: no NaN in the loss)


class MultiHeadParams(MLPParams):
    classes_per_task: int = Field(2, ge=1, description="outputs of each task's head")


class MultiHead(nn.Module):
    def __init__(self, p: MultiHeadParams, n_in: int, n_outputs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in
        for h in p.hidden:
            layers.append(nn.Linear(width, h))
            if p.norm != "none":
                layers.append(nn.BatchNorm1d(h) if p.norm == "batch" else nn.LayerNorm(h))
            layers.append(ACTIVATIONS[p.activation]())
            if p.dropout > 0:
                layers.append(nn.Dropout(p.dropout))
            width = h
        self.trunk = nn.Sequential(*layers)
        self.k = p.classes_per_task
        self.heads = nn.ModuleList(nn.Linear(width, self.k) for _ in range(max(1, n_outputs // self.k)))
        self.n_outputs = n_outputs
        init_weights(self, p.init, p.activation)

    def forward(self, batch) -> torch.Tensor:
        x = model_input(batch).flatten(1)
        task = x[:, -1].round().long().clamp(0, len(self.heads) - 1)
        h = self.trunk(x[:, :-1])
        # Every head scores every row and the task picks one: a head no row of the batch belongs to
        # still gets a (zero) gradient, as DDP needs of every parameter at every step.
        scores = torch.stack([head(h) for head in self.heads], dim=1)  # [rows, heads, k]
        own = scores[torch.arange(len(x), device=x.device), task]  # [rows, k]
        cols = task[:, None] * self.k + torch.arange(self.k, device=x.device)
        out = h.new_full((len(x), self.n_outputs), MASKED)
        return out.scatter(1, cols, own.to(out.dtype))


@register_model("multihead_mlp", MultiHeadParams, kinds=("tabular",))
def multihead_mlp(p: MultiHeadParams, kind: DataKind, n_outputs: int) -> nn.Module:
    """Task-incremental MLP: a shared trunk, one head per task (the last feature is the task id)."""
    return MultiHead(p, in_features(kind) - 1, n_outputs)
