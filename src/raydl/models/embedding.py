"""Models for metric learning and multi-task learning, on the plain CNN's backbone.

- `embedder`: a CNN whose head projects to an embedding (the task's size, `raydl.tasks.embedding`).
  With `views: simclr` it makes two seeded augmented views of every training input (random shift,
  crop-and-resize, Gaussian noise) and returns both views' embeddings, `[2B, D]`; in evaluation it
  embeds the input as it is (`embed: features`: the features that enter the head, the head and
  projection serving the training loss only). The augmentation of each training step is seeded from (`aug_seed`,
  the worker's rank, the step), and the step counter is a buffer saved with the weights, so an
  epoch's augmentations follow from (seed, epoch, rank) and a resumed run continues the same stream.
- `multitask_cnn`: a shared CNN backbone (to a `feature_dim` vector) and one small head per task
  (`heads`: the output size of each, in the order of the data's heads), outputs side by side.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from raydl.batches import DataKind, model_input
from raydl.errors import SpecError
from raydl.models import register_model
from raydl.models.cnn import IMAGE_KINDS, CNNParams, cnn, image_shape


def augment(x: torch.Tensor, seed: int, shift: int, crop: int, noise: float) -> torch.Tensor:
    """Seeded augmentations of a batch of images [B, C, H, W]: a random crop of side between `crop`
    and the full side, resized back, moved by up to `shift` pixels (zeros come in), plus Gaussian
    noise of std `noise`. The same seed gives the same views."""
    g = torch.Generator().manual_seed(int(seed))
    b, _, h, _ = x.shape
    lo = min(max(crop, 1), h) / h
    scale = lo + (1 - lo) * torch.rand(b, generator=g)
    room = (1 - scale) + 2 * shift / h  # the crop's slack plus the shift, in [-1, 1] coordinates
    tx, ty = ((torch.rand(b, generator=g) * 2 - 1) * room, (torch.rand(b, generator=g) * 2 - 1) * room)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = scale, scale, tx, ty
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
    if noise > 0:
        out = out + noise * torch.randn(out.shape, generator=g).to(x.device, x.dtype)
    return out


def step_seed(aug_seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([aug_seed, rank, step]).generate_state(1)[0])


class EmbedderParams(CNNParams):
    views: Literal["none", "simclr"] = Field("none", description="simclr: two augmented views per training input")
    shift: int = Field(1, ge=0, le=8, description="largest shift of a view, in pixels")
    crop: int = Field(6, ge=1, description="smallest crop side of a view, in pixels (resized back)")
    noise: float = Field(0.3, ge=0, description="std of the Gaussian noise added to a view (standardised pixels)")
    aug_seed: int = Field(0, ge=0)
    projection: int = Field(0, ge=0, le=4096, description="hidden units of a projection head used only in training "
                            "(SimCLR's g(.)): the loss sees g(h), evaluation and predictions the embedding h before it; 0: none")
    embed: Literal["head", "features"] = Field(
        "head", description="head: the embedding is the head's output (the task's size); features: what enters the head "
                            "(the pooled or flattened conv features), the head and projection serving the training loss only")
    head: Literal["gap", "flatten"] = Field("gap",
                      description="gap: global average pooling, then a linear layer; flatten: every position's features "
                                  "into the linear layer (keeps where a stroke is)")


class Embedder(nn.Module):
    def __init__(self, net: nn.Module, p: EmbedderParams) -> None:
        super().__init__()
        self.net, self.p = net, p
        d = net[-1].out_features
        self.projection = (nn.Sequential(nn.ReLU(), nn.Linear(d, p.projection), nn.ReLU(), nn.Linear(p.projection, d))
                           if p.projection else nn.Identity())
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, batch) -> torch.Tensor:
        x = model_input(batch)
        if not self.training:
            return self.net[:-1](x) if self.p.embed == "features" else self.net(x)
        if self.p.views != "simclr":
            return self.projection(self.net(x))
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        step = int(self.step.item())
        self.step += 1
        x = x.reshape(len(x), *self.net[0].shape)  # tabular rows forming an image
        seed1, seed2 = step_seed(self.p.aug_seed, rank, 2 * step), step_seed(self.p.aug_seed, rank, 2 * step + 1)
        v1 = augment(x, seed1, self.p.shift, self.p.crop, self.p.noise)
        v2 = augment(x, seed2, self.p.shift, self.p.crop, self.p.noise)
        return self.projection(self.net(torch.cat([v1, v2])))


def _cnn_params(p: CNNParams) -> CNNParams:
    return CNNParams(**{k: getattr(p, k) for k in CNNParams.model_fields})


@register_model("embedder", EmbedderParams, kinds=IMAGE_KINDS)
def embedder(p: EmbedderParams, kind: DataKind, n_outputs: int) -> nn.Module:
    """A CNN to an embedding; with views: simclr, two seeded augmented views of each training input."""
    shape = image_shape(p, kind, "embedder")
    net = cnn(_cnn_params(p), kind, n_outputs)
    if p.head == "flatten":
        n_pools = len(p.channels) - 1 if p.pool != "none" else 0
        side_h, side_w = shape[1] >> n_pools, shape[2] >> n_pools
        gap = next(i for i, m in enumerate(net) if isinstance(m, nn.AdaptiveAvgPool2d))
        net[gap] = nn.Identity()
        net[-1] = nn.Linear(p.channels[-1] * side_h * side_w, n_outputs)
    return Embedder(net, p)


class MultiTaskParams(CNNParams):
    heads: list[int] = Field(..., description="output size of each head (classes, or 1 for a regression head)")
    feature_dim: int = Field(64, ge=1, le=4096, description="the shared backbone's output")
    head_hidden: int = Field(32, ge=0, le=4096, description="hidden units of each head (0: one linear layer)")

    @field_validator("heads")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if not v or any(s < 1 for s in v):
            raise ValueError("give one output size (at least 1) per head")
        return v


class MultiHead(nn.Module):
    def __init__(self, backbone: nn.Module, dim: int, sizes: list[int], hidden: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, s)) if hidden
            else nn.Sequential(nn.ReLU(), nn.Linear(dim, s)) for s in sizes)

    def forward(self, batch) -> torch.Tensor:
        h = self.backbone(model_input(batch))
        return torch.cat([head(h) for head in self.heads], dim=1)


@register_model("multitask_cnn", MultiTaskParams, kinds=IMAGE_KINDS)
def multitask_cnn(p: MultiTaskParams, kind: DataKind, n_outputs: int) -> nn.Module:
    """A shared CNN backbone and one head per task, their outputs side by side."""
    if sum(p.heads) != n_outputs:
        raise SpecError(f"model.heads: {p.heads} give {sum(p.heads)} outputs but the task's heads need {n_outputs} "
                        "(one per class of each classification head, 1 per regression head, in the data's order)")
    return MultiHead(cnn(_cnn_params(p), kind, p.feature_dim), p.feature_dim, p.heads, p.head_hidden)
