"""MobileNets: v1 (depthwise-separable convolutions) and v2 (inverted residuals with linear
bottlenecks), sized for small images. `raydl models` lists their parameters; the README compares
their parameter counts with the plain CNN's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import nn

from raydl.batches import DataKind, model_input
from raydl.errors import SpecError
from raydl.models import OneTensor, register_model
from raydl.models.cnn import (
    IMAGE_KINDS,
    MAX_CHANNELS,
    ImageParams,
    ToImage,
    conv_norm_act,
    gap_head,
    image_shape,
)
from raydl.models.mlp import init_weights


def depthwise_separable(c_in: int, c_out: int, stride: int, norm: str) -> nn.Sequential:
    """A 3x3 depthwise conv (one filter per channel) then a 1x1 pointwise conv, each with norm and ReLU6."""
    return nn.Sequential(*conv_norm_act(c_in, c_in, norm, 3, stride, groups=c_in, act=nn.ReLU6),
                         *conv_norm_act(c_in, c_out, norm, 1, act=nn.ReLU6))


class MobileNetV1Params(ImageParams):
    stem: int = Field(16, ge=1, le=MAX_CHANNELS)
    blocks: list[list[int]] = Field(default_factory=lambda: [[32, 1], [64, 1], [64, 2], [128, 1], [128, 2]],
                                    description="[channels, stride] of each depthwise-separable block")

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, v: list[list[int]]) -> list[list[int]]:
        if not v or any(len(b) != 2 or not 1 <= b[0] <= MAX_CHANNELS or b[1] not in (1, 2) for b in v):
            raise ValueError(f"each block is [channels, stride] with 1 <= channels <= {MAX_CHANNELS} and stride 1 or 2")
        return v


def _check_strides(shape: tuple[int, int, int], strides: list[int], model: str) -> None:
    halvings = sum(s == 2 for s in strides)
    if min(shape[1:]) < 2**halvings:
        raise SpecError(f"model: {model} halves the image {halvings} time(s) (its stride-2 blocks); images of "
                        f"{shape[1]}x{shape[2]} are too small for that: use fewer stride-2 blocks")


@register_model("mobilenet_v1", MobileNetV1Params, kinds=IMAGE_KINDS)
def mobilenet_v1(p: MobileNetV1Params, kind: DataKind, n_outputs: int) -> nn.Module:
    """MobileNet v1: a 3x3 stem, depthwise-separable blocks, global average pooling."""
    shape = image_shape(p, kind, "mobilenet_v1")
    _check_strides(shape, [s for _, s in p.blocks], "mobilenet_v1")
    layers: list[nn.Module] = [ToImage(shape), nn.Sequential(*conv_norm_act(shape[0], p.stem, p.norm, act=nn.ReLU6))]
    c = p.stem
    for width, stride in p.blocks:
        layers.append(depthwise_separable(c, width, stride, p.norm))
        c = width
    model = OneTensor(*layers, *gap_head(c, n_outputs, p.dropout))
    init_weights(model, p.init, "relu")
    return model


class InvertedResidual(nn.Module):
    """1x1 expansion (ReLU6), 3x3 depthwise (ReLU6), 1x1 linear projection (no activation: the
    linear bottleneck); the input is added back when the stride is 1 and the width is kept."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int, norm: str) -> None:
        super().__init__()
        hidden = c_in * expansion
        expand = conv_norm_act(c_in, hidden, norm, 1, act=nn.ReLU6) if expansion != 1 else []
        self.body = nn.Sequential(*expand, *conv_norm_act(hidden, hidden, norm, 3, stride, groups=hidden, act=nn.ReLU6),
                                  *conv_norm_act(hidden, c_out, norm, 1, act=None))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2Params(ImageParams):
    stem: int = Field(16, ge=1, le=MAX_CHANNELS)
    blocks: list[list[int]] = Field(default_factory=lambda: [[1, 16, 1, 1], [4, 24, 2, 1], [4, 32, 2, 2], [4, 64, 2, 1]],
                                    description="[expansion t, channels c, repeats n, stride s] of each stage (the paper's table)")
    last: int = Field(96, ge=1, le=MAX_CHANNELS, description="channels of the final 1x1 conv before pooling")

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, v: list[list[int]]) -> list[list[int]]:
        if not v or any(len(b) != 4 or not 1 <= b[0] <= 16 or not 1 <= b[1] <= MAX_CHANNELS or not 1 <= b[2] <= 16
                        or b[3] not in (1, 2) for b in v):
            raise ValueError("each stage is [expansion 1-16, channels, repeats 1-16, stride 1 or 2]")
        return v


class MobileNetV2(nn.Module):
    def __init__(self, shape: tuple[int, int, int], p: MobileNetV2Params, n_outputs: int) -> None:
        super().__init__()
        self.to_image = ToImage(shape)
        self.stem = nn.Sequential(*conv_norm_act(shape[0], p.stem, p.norm, act=nn.ReLU6))
        blocks, c = [], p.stem
        for t, width, n, s in p.blocks:
            for i in range(n):
                blocks.append(InvertedResidual(c, width, s if i == 0 else 1, t, p.norm))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.last = nn.Sequential(*conv_norm_act(c, p.last, p.norm, 1, act=nn.ReLU6))
        self.head = nn.Sequential(*gap_head(p.last, n_outputs, p.dropout))

    def forward(self, batch: Mapping[str, Any] | torch.Tensor) -> torch.Tensor:
        return self.head(self.last(self.blocks(self.stem(self.to_image(model_input(batch))))))


@register_model("mobilenet_v2", MobileNetV2Params, kinds=IMAGE_KINDS)
def mobilenet_v2(p: MobileNetV2Params, kind: DataKind, n_outputs: int) -> nn.Module:
    """MobileNet v2: inverted residual blocks with linear bottlenecks, a 1x1 conv, global average pooling."""
    shape = image_shape(p, kind, "mobilenet_v2")
    _check_strides(shape, [b[3] for b in p.blocks], "mobilenet_v2")
    model = MobileNetV2(shape, p, n_outputs)
    init_weights(model, p.init, "relu")
    return model
