"""How batches reach each worker: two interchangeable paths, chosen by the size of the data.

- `ray_data`: Ray Data datasets handed to the trainer. The train split is streamed to the
  workers with `streaming_split` (disjoint, equal row counts per rank each epoch) and shuffled
  locally from (seed, epoch, rank); data larger than memory streams through.
- `in_memory`: the arrays are put in the object store once (zero-copy on a node). Each epoch a
  permutation seeded by (seed, epoch) orders all train rows and rank r takes every world-th row,
  as torch's DistributedSampler does. Global batch t is then the same rows for any worker count,
  and small data skips Ray Data's per-run start-up (measured in bench/RESULTS.md).

Validation is split across ranks in both paths; the metric statistics are all-reduced.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

Batch = tuple[torch.Tensor, torch.Tensor]

IN_MEMORY_MAX_BYTES = 512 * 2**20


def choose_loader(requested: str, train_bytes: int) -> str:
    if requested != "auto":
        return requested
    return "in_memory" if train_bytes <= IN_MEMORY_MAX_BYTES else "ray_data"


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


def rank_rows(n: int, rank: int, world: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Row indices of `rank` for `epoch`: every world-th row of the epoch's order, equal counts."""
    order = epoch_order(n, seed, epoch, shuffle)[: (n // world) * world]
    return order[rank::world]


class InMemoryShards:
    def __init__(self, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                 rank: int, world: int, seed: int, shuffle: bool) -> None:
        self.x, self.y = (torch.from_numpy(np.asarray(a)) for a in train)
        self.vx, self.vy = (torch.from_numpy(np.asarray(a)) for a in val)
        self.rank, self.world, self.seed, self.shuffle = rank, world, seed, shuffle

    def train(self, epoch: int, batch_size: int) -> Iterator[Batch]:
        rows = torch.from_numpy(rank_rows(len(self.y), self.rank, self.world, self.seed, epoch, self.shuffle))
        for i in range(0, len(rows), batch_size):
            idx = rows[i : i + batch_size]
            yield self.x[idx], self.y[idx]

    def val(self, batch_size: int = 1024) -> Iterator[Batch]:
        x, y = self.vx[self.rank :: self.world], self.vy[self.rank :: self.world]
        for i in range(0, len(y), batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]


class RayDataShards:
    def __init__(self, n_val: int, rank: int, world: int, seed: int, shuffle: bool) -> None:
        import ray.train

        self.train_it = ray.train.get_dataset_shard("train")
        self.val_it = ray.train.get_dataset_shard("val")  # not split: each rank takes every world-th batch
        self.val_batch = max(1, min(1024, -(-n_val // world)))
        self.rank, self.world, self.seed, self.shuffle = rank, world, seed, shuffle

    def train(self, epoch: int, batch_size: int) -> Iterator[Batch]:
        for b in self.train_it.iter_torch_batches(
            batch_size=batch_size,
            local_shuffle_buffer_size=4 * batch_size if self.shuffle else None,
            local_shuffle_seed=(self.seed * 100_003 + epoch * 1_009 + self.rank) if self.shuffle else None,
        ):
            yield b["x"], b["y"]

    def val(self) -> Iterator[Batch]:
        for j, b in enumerate(self.val_it.iter_torch_batches(batch_size=self.val_batch)):
            if j % self.world == self.rank:
                yield b["x"], b["y"]
