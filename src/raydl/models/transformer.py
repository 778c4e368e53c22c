"""Transformer encoder: token or feature embedding, sinusoidal or learned positions, multi-head
self-attention with a padding mask (and a causal mask as an option), pooled per sequence or read
at every step (next-token prediction, which needs `causal: true`)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from raydl.batches.sequence import SequenceKind, step_mask
from raydl.models import register_model
from raydl.models.sequence import InputEmbedding, last_step, masked_mean, needs_causal
from raydl.spec import Section


class TransformerParams(Section):
    d_model: int = Field(64, ge=2, le=4096, description="width of every token's vector")
    heads: int = Field(4, ge=1, le=64, description="attention heads (d_model must divide by it)")
    layers: int = Field(2, ge=1, le=24)
    ff: int = Field(128, ge=1, le=16384, description="feed-forward width")
    dropout: float = Field(0.1, ge=0, lt=1)
    positional: Literal["sinusoidal", "learned"] = "sinusoidal"
    causal: bool = Field(False, description="each step attends only to itself and earlier steps")
    pool: Literal["mean", "cls", "last"] = Field("mean", description="per sequence: mean over real steps, a [CLS] token, or the last real step")

    @model_validator(mode="after")
    def _consistent(self) -> TransformerParams:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})")
        if self.causal and self.pool == "cls":
            raise ValueError("pool 'cls' with causal: true would see only itself (it comes first); use pool: last or mean")
        return self


def sinusoidal(steps: int, dim: int) -> torch.Tensor:
    """[steps, dim] fixed positional encodings (Vaswani et al. 2017): sin on even, cos on odd dims."""
    pos = torch.arange(steps, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(steps, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return pe


def causal_mask(steps: int, device: torch.device) -> torch.Tensor:
    """[T, T] bool: True where attention is not allowed (a later step)."""
    return torch.triu(torch.ones(steps, steps, dtype=torch.bool, device=device), diagonal=1)


class Transformer(nn.Module):
    def __init__(self, p: TransformerParams, kind: SequenceKind, n_outputs: int) -> None:
        super().__init__()
        self.embed = InputEmbedding(kind, p.d_model)
        self.scale = math.sqrt(p.d_model) if kind.vocab_size is not None else 1.0
        self.pool, self.causal, self.per_step = p.pool, p.causal, kind.per_step
        steps = kind.steps + (p.pool == "cls")
        if p.positional == "learned":
            self.pos = nn.Parameter(torch.randn(steps, p.d_model) * 0.02)
        else:
            self.register_buffer("pos", sinusoidal(steps, p.d_model), persistent=False)
        self.cls = nn.Parameter(torch.randn(1, 1, p.d_model) * 0.02) if p.pool == "cls" else None
        layer = nn.TransformerEncoderLayer(p.d_model, p.heads, p.ff, p.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, p.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(p.d_model)
        self.head = nn.Linear(p.d_model, n_outputs)

    def forward(self, batch) -> torch.Tensor:
        length = batch["length"]
        h = self.embed(batch["x"]) * self.scale
        if self.cls is not None:  # a learned [CLS] token before the first step
            h = torch.cat([self.cls.expand(len(h), -1, -1), h], dim=1)
            length = length + 1
        steps = h.shape[1]
        h = h + self.pos[:steps]
        pad = ~step_mask(length, steps)  # True: a padded step, never attended to
        mask = causal_mask(steps, h.device) if self.causal else None
        h = self.norm(self.encoder(h, mask=mask, src_key_padding_mask=pad))
        if self.per_step:
            return self.head(h)
        if self.pool == "cls":
            return self.head(h[:, 0])
        return self.head(last_step(h, length) if self.pool == "last" else masked_mean(h, length))


@register_model("transformer", TransformerParams, kinds=("sequence",))
def transformer(p: TransformerParams, kind: SequenceKind, n_outputs: int) -> nn.Module:
    """Transformer encoder: embedding, positions, multi-head self-attention with padding (and causal) masks."""
    needs_causal(kind, "transformer", not p.causal, "set causal: true")
    return Transformer(p, kind, n_outputs)
