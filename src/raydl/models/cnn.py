"""Convolutional image models: a plain CNN (conv/norm/ReLU blocks, pooling, global average pooling
head) and a ResNet (residual blocks with identity and projection shortcuts).

Both take image data (`[B, C, H, W]`, e.g. `digits_images` read as 1x8x8) or tabular data whose
features form the image declared by `input_shape` (checked when the spec is resolved). The
helpers here (`image_input`, `norm2d`, `conv_norm_act`, `gap_head`) are shared by the other
vision families (MobileNet, U-Net, the grid detector).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from raydl.batches import DataKind, model_input
from raydl.errors import SpecError
from raydl.models import OneTensor, register_model
from raydl.models.mlp import Init, init_weights
from raydl.spec import Section

Norm = Literal["batch", "group", "none"]
MAX_CHANNELS = 4096
IMAGE_KINDS = ("image", "tabular")


def positive_widths(v: list[int], what: str = "channel count") -> list[int]:
    if not v or any(w < 1 or w > MAX_CHANNELS for w in v):
        raise ValueError(f"give at least one {what}, each at least 1 and at most {MAX_CHANNELS}")
    return v


class ImageParams(Section):
    """What every image model takes besides its architecture."""

    norm: Norm = Field("batch", description="batch norm, group norm (per sample) or none after each conv")
    init: Init = "he"
    dropout: float = Field(0.0, ge=0, lt=1, description="before the classifier head")
    input_shape: list[int] | None = Field(None, description="[C, H, W] of tabular features read as an image")

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) != 3 or any(d < 1 for d in v)):
            raise ValueError("input_shape is [channels, height, width], each at least 1")
        return v


def image_shape(p: ImageParams, kind: DataKind, model: str) -> tuple[int, int, int]:
    """(C, H, W) of one input: the image kind's own shape, or tabular features read as `input_shape`."""
    if kind.name == "image":
        shape = tuple(kind.shape) if len(kind.shape) == 3 else (1, *kind.shape) if len(kind.shape) == 2 else None
        if shape is None:
            raise SpecError(f"model.name: {model} takes images of shape [C, H, W], the data's samples have shape {list(kind.shape)}")
        if p.input_shape is not None and list(p.input_shape) != list(shape):
            raise SpecError(f"model.input_shape: {p.input_shape} does not match the images' shape {list(shape)}; drop it")
        return shape
    n = math.prod(kind.shape)
    if p.input_shape is None:
        raise SpecError(f"model.input_shape: {model} on tabular data needs the image its {n} features form, "
                        f"as [channels, height, width] (e.g. [1, 8, 8] for 64 pixels), or an image dataset")
    if math.prod(p.input_shape) != n:
        raise SpecError(f"model.input_shape: {p.input_shape} holds {math.prod(p.input_shape)} values but the data has "
                        f"{n} features; the features must form the declared [channels, height, width] image")
    return tuple(p.input_shape)


class ToImage(nn.Module):
    """Reshape a batch's input to [B, C, H, W] (tabular rows of C*H*W features, or images already)."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


def norm2d(norm: str, c: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(c)
    if norm == "group":
        return nn.GroupNorm(math.gcd(c, 8), c)
    return nn.Identity()


def conv_norm_act(c_in: int, c_out: int, norm: str, kernel: int = 3, stride: int = 1, groups: int = 1,
                  act: type[nn.Module] | None = nn.ReLU) -> list[nn.Module]:
    """Conv (no bias when a norm follows), norm, activation: the fusable conv-bn-relu pattern."""
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=norm == "none"), norm2d(norm, c_out)]
    if norm == "none":
        layers.pop()
    if act is not None:
        layers.append(act())
    return layers


def gap_head(c: int, n_outputs: int, dropout: float) -> list[nn.Module]:
    """Global average pooling, then one linear classifier."""
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), *([nn.Dropout(dropout)] if dropout > 0 else []), nn.Linear(c, n_outputs)]


class CNNParams(ImageParams):
    channels: list[int] = Field(default_factory=lambda: [32, 64, 128], description="output channels of each conv block")
    convs_per_block: int = Field(2, ge=1, le=8)
    kernel_size: int = Field(3, ge=1, le=7)
    pool: Literal["max", "avg", "none"] = Field("max", description="2x2 pooling after every block but the last")

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: list[int]) -> list[int]:
        return positive_widths(v)

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("kernel_size must be odd (the convolutions keep the image size)")
        return v


def _check_pooling(shape: tuple[int, int, int], n_pools: int, model: str, what: str) -> None:
    side = min(shape[1:])
    if side < 2**n_pools:
        raise SpecError(f"model: {model} halves the image {n_pools} time(s) ({what}); images of {shape[1]}x{shape[2]} "
                        f"are too small for that: use fewer blocks or pool: none")


@register_model("cnn", CNNParams, kinds=IMAGE_KINDS)
def cnn(p: CNNParams, kind: DataKind, n_outputs: int) -> nn.Module:
    """Conv/norm/ReLU blocks with 2x2 pooling between them, and a global-average-pooling head."""
    shape = image_shape(p, kind, "cnn")
    n_pools = (len(p.channels) - 1) if p.pool != "none" else 0
    _check_pooling(shape, n_pools, "cnn", f"{len(p.channels)} blocks with pool: {p.pool}")
    layers: list[nn.Module] = [ToImage(shape)]
    c = shape[0]
    for i, width in enumerate(p.channels):
        block: list[nn.Module] = []
        for _ in range(p.convs_per_block):
            block += conv_norm_act(c, width, p.norm, p.kernel_size)
            c = width
        layers.append(nn.Sequential(*block))
        if p.pool != "none" and i < len(p.channels) - 1:
            layers.append(nn.MaxPool2d(2) if p.pool == "max" else nn.AvgPool2d(2))
    model = OneTensor(*layers, *gap_head(c, n_outputs, p.dropout))
    init_weights(model, p.init, "relu")
    return model


class BasicBlock(nn.Module):
    """Two 3x3 convs and a shortcut: the identity when the shape is kept, else a strided 1x1
    projection (conv + norm) to the new width."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_norm_act(c_in, c_out, norm, 3, stride), *conv_norm_act(c_out, c_out, norm, 3, act=None))
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(*conv_norm_act(c_in, c_out, norm, 1, stride, act=None)))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNetParams(ImageParams):
    stem: int = Field(16, ge=1, le=MAX_CHANNELS, description="channels of the first 3x3 conv")
    widths: list[int] = Field(default_factory=lambda: [16, 32, 64], description="channels of each stage; "
                              "every stage after the first starts with stride 2 and a projection shortcut")
    blocks: int = Field(1, ge=1, le=16, description="residual blocks per stage")

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        return positive_widths(v)


class ResNet(nn.Module):
    def __init__(self, shape: tuple[int, int, int], p: ResNetParams, n_outputs: int) -> None:
        super().__init__()
        self.to_image = ToImage(shape)
        self.stem = nn.Sequential(*conv_norm_act(shape[0], p.stem, p.norm))
        stages, c = [], p.stem
        for i, width in enumerate(p.widths):
            stride = 1 if i == 0 else 2
            stages += [BasicBlock(c if b == 0 else width, width, stride if b == 0 else 1, p.norm) for b in range(p.blocks)]
            c = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(*gap_head(c, n_outputs, p.dropout))

    def forward(self, batch: Mapping[str, Any] | torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(self.to_image(model_input(batch)))))


@register_model("resnet", ResNetParams, kinds=IMAGE_KINDS)
def resnet(p: ResNetParams, kind: DataKind, n_outputs: int) -> nn.Module:
    """A 3x3 stem, stages of residual blocks (identity / projection shortcuts), global average pooling."""
    shape = image_shape(p, kind, "resnet")
    _check_pooling(shape, len(p.widths) - 1, "resnet", f"{len(p.widths)} stages")
    model = ResNet(shape, p, n_outputs)
    init_weights(model, p.init, "relu")
    return model
