"""What the sequence models share: the input embedding, masks and pooling over real steps.

The models themselves live beside this file: `cnn1d` (temporal convolutions), `rnn`/`lstm`/`gru`
(packed variable-length input), `transformer` (self-attention with a padding mask). Each takes a
batch of the "sequence" data kind (`raydl.batches.sequence`) and returns one output vector per
sequence, or one per step when the data's target is per step (next-token prediction).
"""

from __future__ import annotations

import torch
from torch import nn

from raydl.batches.sequence import SequenceKind, step_mask
from raydl.errors import SpecError


class InputEmbedding(nn.Module):
    """Token ids -> learned vectors (id 0, the padding, maps to zeros); feature vectors -> a linear
    projection, or themselves when `dim` is None."""

    def __init__(self, kind: SequenceKind, dim: int | None) -> None:
        super().__init__()
        if kind.vocab_size is not None:
            self.proj: nn.Module = nn.Embedding(kind.vocab_size, dim or 32, padding_idx=0)
            self.dim = dim or 32
        elif dim is None:
            self.proj, self.dim = nn.Identity(), kind.features
        else:
            self.proj, self.dim = nn.Linear(kind.features, dim), dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def masked_mean(h: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """[B, T, D] -> [B, D]: the mean over each sequence's real steps (padding contributes nothing)."""
    mask = step_mask(length, h.shape[1]).unsqueeze(-1)
    return h.masked_fill(~mask, 0.0).sum(1) / length.clamp(min=1).unsqueeze(-1).to(h.dtype)


def last_step(h: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """[B, T, D] -> [B, D]: the output at each sequence's last real step."""
    idx = (length - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, h.shape[2])
    return h.gather(1, idx).squeeze(1)


def needs_causal(kind: SequenceKind, model: str, sees_future: bool, fix: str) -> None:
    """A per-step (next-token) target must not be visible to the model: refuse a model that sees
    later steps, with the setting that fixes it."""
    if kind.per_step and sees_future:
        raise SpecError(f"model: {model} would see the next token it must predict on this per-step (next-token) data; {fix}")
