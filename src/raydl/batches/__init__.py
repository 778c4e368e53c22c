"""Batches and the data kinds that make them.

A batch is a mapping of named tensors (`{"x": ..., "y": ...}` for tabular and image data), or an
object with `.to(device)` such as a torch-geometric `Batch`. It is moved to the device in one
place (`to_device`), and every model is called as `model(batch)`: a model reads the inputs it
needs, a task reads its target (`"y"`).

A data kind owns its collate: how columns of model-ready rows (`x`, `y` when labelled, and any
others its data carries, e.g. `length`) become a batch. Adding one (sequence, graph) is one
`DATA_KINDS.register(name)` of a builder `(prep) -> DataKind`, where `prep` is the data's
`raydl.data.Preprocessing` (its `sample_shape` and `kind_params`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from raydl.registry import Registry

Batch = Mapping[str, Any]


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Mapping):
        return {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}
    return batch.to(device)


def batch_len(batch: Any) -> int:
    """Samples in a batch: graphs in a graph batch, else the length of the target."""
    n = getattr(batch, "num_graphs", None)
    return int(n) if n is not None else len(batch["y"])


def model_input(batch: Any) -> torch.Tensor:
    """The `x` of a batch, for models whose only input is one tensor (they also take `x` bare)."""
    return batch["x"] if isinstance(batch, Mapping) else batch


class DataKind(Protocol):
    name: str
    shape: tuple[int, ...]  # one sample's input shape

    def collate(self, cols: Mapping[str, Any]) -> Batch: ...


@dataclass(frozen=True)
class FixedShape:
    """Rows of F numbers, read as one sample of `shape` (F,) for tables, (C, H, W) for images."""

    name: str
    shape: tuple[int, ...]

    def collate(self, cols: Mapping[str, Any]) -> Batch:
        x = torch.as_tensor(cols["x"])
        return {**cols, "x": x.reshape(len(x), *self.shape)}


DATA_KINDS: Registry[Callable[[Any], DataKind]] = Registry("data kind")
DATA_KINDS.register("tabular")(lambda prep: FixedShape("tabular", tuple(prep.sample_shape)))
DATA_KINDS.register("image")(lambda prep: FixedShape("image", tuple(prep.sample_shape)))


def build_kind(prep: Any) -> DataKind:
    """The data kind of prepared data (`prep.kind`), built from its preprocessing."""
    return DATA_KINDS.get(prep.kind, "data kind")(prep)


# Data kinds beyond fixed-shape rows live in modules of this package and register themselves
# when imported here (one line each).
from raydl.batches import graph, sequence  # noqa: E402,F401
