"""1-D CNN for series: blocks of temporal convolution (+ batch norm) + activation + pooling over
time, then global average pooling over the real steps and a linear head.

Padding never reaches a real step's value: padded steps are zeroed before every convolution (so
a sequence sees the zeros a 'same' convolution pads with at its end, padded or not), left out of
every max pool (they are -inf there) and out of the global average. Pooling halves the lengths,
rounding up. With `norm: batch`, batch statistics in training include the padded steps; use
`norm: none` for variable-length data when that matters.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from raydl.batches.sequence import SequenceKind, step_mask
from raydl.errors import SpecError
from raydl.models import register_model
from raydl.models.mlp import ACTIVATIONS
from raydl.models.sequence import InputEmbedding, masked_mean
from raydl.spec import Section


class CNN1dParams(Section):
    channels: list[int] = Field(default_factory=lambda: [32, 64, 64], description="output channels of each conv block")
    kernel_size: int = Field(5, ge=1, le=63, description="odd, so a 'same' convolution stays centred")
    pool: Literal["max", "none"] = Field("max", description="max pooling (stride 2) after each block but the last")
    norm: Literal["batch", "none"] = "batch"
    activation: Literal["relu", "leaky_relu", "tanh"] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1, description="before the head")
    embed_dim: int = Field(32, ge=1, le=4096, description="token embedding size (token data only)")

    @field_validator("channels")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if not v or any(c < 1 or c > 4096 for c in v):
            raise ValueError("give at least one block, each with 1 to 4096 channels")
        return v

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("kernel_size must be odd")
        return v


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, p: CNN1dParams) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, p.kernel_size, padding=p.kernel_size // 2, bias=p.norm == "none")
        self.norm = nn.BatchNorm1d(c_out) if p.norm == "batch" else nn.Identity()
        self.act = ACTIVATIONS[p.activation]()

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(h.masked_fill(~mask[:, None, :], 0.0))))


class CNN1d(nn.Module):
    def __init__(self, p: CNN1dParams, kind: SequenceKind, n_outputs: int) -> None:
        super().__init__()
        self.embed = InputEmbedding(kind, p.embed_dim if kind.vocab_size is not None else None)
        widths = [self.embed.dim, *p.channels]
        self.blocks = nn.ModuleList(Block(a, b, p) for a, b in zip(widths[:-1], widths[1:]))
        self.pool = p.pool
        self.drop = nn.Dropout(p.dropout)
        self.head = nn.Linear(widths[-1], n_outputs)

    def forward(self, batch) -> torch.Tensor:
        length = batch["length"]
        h = self.embed(batch["x"]).transpose(1, 2)  # [B, C, T]
        for i, block in enumerate(self.blocks):
            h = block(h, step_mask(length, h.shape[2]))
            if self.pool == "max" and i < len(self.blocks) - 1:
                h = F.max_pool1d(h.masked_fill(~step_mask(length, h.shape[2])[:, None, :], float("-inf")), 2, ceil_mode=True)
                length = (length + 1) // 2
                h = h.masked_fill(~step_mask(length, h.shape[2])[:, None, :], 0.0)
        return self.head(self.drop(masked_mean(h.transpose(1, 2), length)))


@register_model("cnn1d", CNN1dParams, kinds=("sequence",))
def cnn1d(p: CNN1dParams, kind: SequenceKind, n_outputs: int) -> nn.Module:
    """1-D CNN: temporal conv blocks, max pooling over time, global average pooling over real steps."""
    if kind.per_step:
        raise SpecError("model.name: cnn1d classifies whole sequences, and this data has a target per step "
                        "(next-token prediction); use transformer (causal: true), rnn, lstm or gru")
    return CNN1d(p, kind, n_outputs)
