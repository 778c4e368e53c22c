"""Recurrent networks: Elman RNN (tanh), LSTM and GRU, uni- or bidirectional, on packed sequences.

Variable-length input is packed (`pack_padded_sequence`) from the batch's `length`, so the
recurrence never runs over padding: the backward direction of a bidirectional model starts at
each sequence's last real step, and the final state is taken there.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from raydl.batches.sequence import SequenceKind
from raydl.models import register_model
from raydl.models.sequence import InputEmbedding, masked_mean, needs_causal
from raydl.spec import Section

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RNNParams(Section):
    hidden: int = Field(64, ge=1, le=4096, description="state size per direction")
    layers: int = Field(1, ge=1, le=8, description="stacked recurrent layers")
    bidirectional: bool = False
    dropout: float = Field(0.0, ge=0, lt=1, description="between stacked layers, and before the head")
    embed_dim: int = Field(32, ge=1, le=4096, description="token embedding size (token data only)")
    pool: Literal["last", "mean"] = Field("last", description="per sequence: the final state, or the mean over real steps")


class Recurrent(nn.Module):
    def __init__(self, cell: str, p: RNNParams, kind: SequenceKind, n_outputs: int) -> None:
        super().__init__()
        self.embed = InputEmbedding(kind, p.embed_dim if kind.vocab_size is not None else None)
        self.rnn = CELLS[cell](self.embed.dim, p.hidden, num_layers=p.layers, batch_first=True,
                               bidirectional=p.bidirectional, dropout=p.dropout if p.layers > 1 else 0.0)
        self.dirs, self.pool, self.per_step = 2 if p.bidirectional else 1, p.pool, kind.per_step
        self.drop = nn.Dropout(p.dropout)
        self.head = nn.Linear(self.dirs * p.hidden, n_outputs)

    def forward(self, batch) -> torch.Tensor:
        x, length = self.embed(batch["x"]), batch["length"]
        packed = pack_padded_sequence(x, length.cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        if self.per_step or self.pool == "mean":
            steps, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
            if self.per_step:
                return self.head(self.drop(steps))
            return self.head(self.drop(masked_mean(steps, length)))
        h = state[0] if isinstance(state, tuple) else state  # LSTM: (h, c)
        last = torch.cat(list(h[-self.dirs :]), dim=1)  # the top layer's final state, each direction
        return self.head(self.drop(last))


def _builder(cell: str):
    def build(p: RNNParams, kind: SequenceKind, n_outputs: int) -> nn.Module:
        needs_causal(kind, cell, p.bidirectional, "set bidirectional: false")
        return Recurrent(cell, p, kind, n_outputs)

    build.__doc__ = {
        "rnn": "Elman RNN (tanh), uni- or bidirectional, on packed variable-length sequences.",
        "lstm": "LSTM, uni- or bidirectional, on packed variable-length sequences.",
        "gru": "GRU, uni- or bidirectional, on packed variable-length sequences.",
    }[cell]
    return build


for _cell in CELLS:
    register_model(_cell, RNNParams, kinds=("sequence",))(_builder(_cell))
