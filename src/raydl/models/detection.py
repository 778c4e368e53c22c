"""A grid detector with anchor boxes (YOLO v2/v3 style, one scale), for the detection task.

A conv backbone downsamples the image to an SxS grid; a head predicts, for each cell and each
anchor (prior box shape), an objectness logit, box offsets and class logits. The model decodes
them itself: centre = (cell + sigmoid(t_xy)) x stride, size = anchor x exp(t_wh). It returns
`[B, S*S*A, 9 + C]` rows of objectness, decoded box (cx, cy, w, h), prior box (cx, cy, w, h) and
class logits: what `raydl.tasks.detection` trains and scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import nn

from raydl.batches import DataKind, model_input
from raydl.errors import SpecError
from raydl.models import register_model
from raydl.models.cnn import ImageParams, ToImage, conv_norm_act, image_shape, positive_widths
from raydl.models.mlp import init_weights

MAX_LOG_SCALE = 4.0  # exp(4) ~ 55x an anchor: keeps exp() finite early in training


class DetectorParams(ImageParams):
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64], description="conv blocks; 2x2 max pooling between them")
    anchors: list[list[float]] = Field(default_factory=lambda: [[10.0, 10.0], [15.0, 15.0]],
                                       description="[width, height] of each anchor box, in pixels")

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: list[int]) -> list[int]:
        return positive_widths(v)

    @field_validator("anchors")
    @classmethod
    def _anchors(cls, v: list[list[float]]) -> list[list[float]]:
        if not v or len(v) > 16 or any(len(a) != 2 or not all(0 < s <= 10_000 for s in a) for a in v):
            raise ValueError("anchors are 1 to 16 pairs [width, height] of positive pixel sizes")
        return v


class GridDetector(nn.Module):
    def __init__(self, shape: tuple[int, int, int], p: DetectorParams, n_outputs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [ToImage(shape)]
        c = shape[0]
        for i, width in enumerate(p.channels):
            layers += [*conv_norm_act(c, width, p.norm), *conv_norm_act(width, width, p.norm)]
            if i < len(p.channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c = width
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Sequential(*conv_norm_act(c, c, p.norm), nn.Conv2d(c, len(p.anchors) * n_outputs, 1))
        self.n_out = n_outputs
        stride = 2 ** (len(p.channels) - 1)
        gh, gw = shape[1] // stride, shape[2] // stride
        yy, xx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        anchors = torch.tensor(p.anchors, dtype=torch.float32)
        # Grid geometry as buffers (not parameters): cell offsets [S, S, 1, 2] and anchors [A, 2].
        self.register_buffer("cells", torch.stack([xx, yy], -1)[:, :, None, :].float(), persistent=False)
        self.register_buffer("anchors", anchors, persistent=False)
        self.stride = float(stride)

    def forward(self, batch: Mapping[str, Any] | torch.Tensor) -> torch.Tensor:
        raw = self.head(self.backbone(model_input(batch)))
        b, _, gh, gw = raw.shape
        a = len(self.anchors)
        raw = raw.view(b, a, self.n_out, gh, gw).permute(0, 3, 4, 1, 2)  # [B, S, S, A, 5 + C]
        xy = (self.cells + torch.sigmoid(raw[..., 1:3])) * self.stride
        wh = self.anchors * torch.exp(raw[..., 3:5].clamp(max=MAX_LOG_SCALE))
        prior = torch.cat([((self.cells + 0.5) * self.stride).expand(gh, gw, a, 2),
                           self.anchors.expand(gh, gw, a, 2)], -1).expand(b, gh, gw, a, 4)
        return torch.cat([raw[..., :1], xy, wh, prior, raw[..., 5:]], -1).reshape(b, gh * gw * a, 4 + self.n_out)


@register_model("grid_detector", DetectorParams, kinds=("image",))
def grid_detector(p: DetectorParams, kind: DataKind, n_outputs: int) -> nn.Module:
    """A conv backbone to an SxS grid; per cell and anchor: objectness, box, classes (detection task)."""
    shape = image_shape(p, kind, "grid_detector")
    stride = 2 ** (len(p.channels) - 1)
    if shape[1] % stride or shape[2] % stride:
        raise SpecError(f"model.channels: {len(p.channels)} blocks give a grid stride of {stride}; the image side "
                        f"({shape[1]}x{shape[2]}) must divide by it")
    if n_outputs < 6:
        raise SpecError("model.name: grid_detector is for the detection task (e.g. data.source: shapes_detection)")
    model = GridDetector(shape, p, n_outputs)
    init_weights(model, p.init, "relu")
    return model
