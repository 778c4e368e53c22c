"""U-Net: an encoder of conv blocks and 2x2 max pooling, a decoder of 2x2 transposed convolutions,
each concatenated with the encoder's feature map of the same size (skip connections), and a 1x1
conv to one logit per class per pixel (`[B, C, H, W]`, for the segmentation task)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field
from torch import nn

from raydl.batches import DataKind, model_input
from raydl.errors import SpecError
from raydl.models import register_model
from raydl.models.cnn import MAX_CHANNELS, ImageParams, ToImage, conv_norm_act, image_shape
from raydl.models.mlp import init_weights


def double_conv(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    return nn.Sequential(*conv_norm_act(c_in, c_out, norm), *conv_norm_act(c_out, c_out, norm))


class UNetParams(ImageParams):
    base: int = Field(16, ge=1, le=MAX_CHANNELS, description="channels of the first level; doubled at every level down")
    depth: int = Field(2, ge=1, le=6, description="number of 2x2 downsamplings (the image side must divide by 2^depth)")


class UNet(nn.Module):
    def __init__(self, shape: tuple[int, int, int], p: UNetParams, n_outputs: int) -> None:
        super().__init__()
        widths = [p.base * 2**i for i in range(p.depth + 1)]
        self.to_image = ToImage(shape)
        self.down = nn.ModuleList([double_conv(shape[0], widths[0], p.norm)] +
                                  [double_conv(widths[i], widths[i + 1], p.norm) for i in range(p.depth)])
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(p.depth))])
        self.fuse = nn.ModuleList([double_conv(2 * widths[i], widths[i], p.norm) for i in reversed(range(p.depth))])
        self.dropout = nn.Dropout2d(p.dropout) if p.dropout > 0 else nn.Identity()
        self.out = nn.Conv2d(widths[0], n_outputs, 1)

    def forward(self, batch: Mapping[str, Any] | torch.Tensor) -> torch.Tensor:
        x = self.to_image(model_input(batch))
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = self.dropout(skips.pop())  # the bottleneck
        for up, fuse in zip(self.up, self.fuse):
            x = fuse(torch.cat([skips.pop(), up(x)], dim=1))
        return self.out(x)


@register_model("unet", UNetParams, kinds=("image",))
def unet(p: UNetParams, kind: DataKind, n_outputs: int) -> nn.Module:
    """Encoder/decoder with skip connections and transposed convs: per-pixel logits for segmentation."""
    shape = image_shape(p, kind, "unet")
    if shape[1] % 2**p.depth or shape[2] % 2**p.depth:
        raise SpecError(f"model.depth: {p.depth} halvings need an image side divisible by {2**p.depth}; "
                        f"the images are {shape[1]}x{shape[2]}")
    model = UNet(shape, p, n_outputs)
    init_weights(model, p.init, "relu")
    return model
