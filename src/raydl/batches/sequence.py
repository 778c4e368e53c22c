"""The "sequence" data kind: padded sequences of feature vectors or token ids, with their lengths.

Rows hold "x" ([T, F] floats, or [T] token ids when the data has a vocabulary), "length" (the
number of real steps; every step counts when the data has no "length" column) and the target.
A batch is `{"x": [B, T, F] float | [B, T] long, "length": [B] long, "y": ...}`; models read
`length` and never let a padded step change a real step's output.

Kind parameters (from the dataset, saved in preprocessing.json): `vocab_size` for token data,
`per_step: true` when the target is one per step (next-token prediction), `vocab` (the tokens'
names, for predictions).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from raydl.batches import DATA_KINDS, Batch
from raydl.errors import DataError

PAD = 0  # the padding token id (token data), and what padded feature steps hold
IGNORE = -100  # a per-step target without a token (padding): cross_entropy's ignore_index


@dataclass(frozen=True)
class SequenceKind:
    shape: tuple[int, ...]  # (T, F) for feature vectors, (T,) for token ids
    vocab_size: int | None = None  # token ids in [0, vocab_size); 0 is padding
    per_step: bool = False  # one target per step (a causal model is required)
    name: str = "sequence"

    @property
    def steps(self) -> int:
        return self.shape[0]

    @property
    def features(self) -> int:
        """Features per step (1 for token ids, which a model embeds first)."""
        return self.shape[1] if len(self.shape) > 1 else 1

    def collate(self, cols: Mapping[str, Any]) -> Batch:
        x = torch.as_tensor(cols["x"])
        n, steps = len(x), x.shape[1]
        if self.vocab_size is not None:
            x = x.long()
        else:
            x = x.float().reshape(n, steps, -1)
        length = cols.get("length")
        length = (torch.full((n,), steps, dtype=torch.long, device=x.device) if length is None
                  else torch.as_tensor(length).long())
        return {**cols, "x": x, "length": length}


def step_mask(length: torch.Tensor, steps: int) -> torch.Tensor:
    """[B, T] bool: True at the real steps of each sequence."""
    return torch.arange(steps, device=length.device)[None, :] < length[:, None]


def _sequence(prep: Any) -> SequenceKind:
    shape = tuple(prep.sample_shape)
    params = prep.kind_params or {}
    if len(shape) not in (1, 2):
        raise DataError(f"data: sequence rows must be [steps] token ids or [steps, features], got shape {list(shape)}")
    vocab = params.get("vocab_size")
    if vocab is None and len(shape) == 1:
        shape = (shape[0], 1)  # one float feature per step
    return SequenceKind(shape, vocab, bool(params.get("per_step", False)))


DATA_KINDS.register("sequence")(_sequence)
