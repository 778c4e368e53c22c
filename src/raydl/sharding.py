"""How batches reach each worker: two interchangeable paths, chosen by the size of the data.

- `ray_data`: Ray Data datasets handed to the trainer. The train split is streamed to the
  workers with `streaming_split` (disjoint, equal row counts per rank each epoch); with shuffling
  on, the files are read in a new seeded order each epoch and each rank shuffles its rows in a
  buffer of `SHUFFLE_BUFFER_ROWS` seeded by (seed, epoch, rank); data larger than memory streams through.
- `in_memory`: the arrays are put in the object store once (zero-copy on a node). Each epoch a
  permutation seeded by (seed, epoch) orders all train rows and rank r takes every world-th row,
  as torch's DistributedSampler does. Global batch t is then the same rows for any worker count,
  and small data skips Ray Data's per-run start-up (measured in bench/RESULTS.md).

Validation and test are split across ranks in both paths (each row scored once); the metric
statistics are all-reduced.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator

import numpy as np
import torch

Cols = dict[str, torch.Tensor]  # model-ready columns of a batch; the data kind's collate makes the batch

IN_MEMORY_MAX_BYTES = 512 * 2**20
# Rows each worker's Ray Data shuffle buffer holds before it yields: rows mix across this many
# (the files are read in a new order each epoch, see `raydl.source`). Throughput through
# iter_torch_batches was the same at 1k, 16k and 64k rows (240-280k rows/s, 64 float32 features).
SHUFFLE_BUFFER_ROWS = 16_384
# Rows per batch asked of Ray Data's iterator (a whole number of train batches; see `RayDataShards.train`).
CHUNK_ROWS = 4096


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
    """Arrays already in the object store: `splits` maps "train"/"val"/"test" to their columns.

    On a GPU the columns are copied to the device once, when they take at most a quarter of its
    free memory: each batch is then a slice on the device, with no host-to-device copy per step."""

    def __init__(self, splits: dict[str, dict[str, np.ndarray]], rank: int, world: int, seed: int, shuffle: bool,
                 device: torch.device | None = None) -> None:
        cols = {k: _tensors(cs) for k, cs in splits.items()}
        self.device = torch.device("cpu")
        if device is not None and device.type == "cuda":
            size = sum(a.nbytes for cs in cols.values() for a in cs.values())
            if size <= torch.cuda.mem_get_info(device)[0] // 4:
                self.device = device
        self.splits = {k: {c: a.to(self.device) for c, a in cs.items()} for k, cs in cols.items()}
        self.rank, self.world, self.seed, self.shuffle = rank, world, seed, shuffle

    def train(self, epoch: int, batch_size: int, next_epoch: int | None = None) -> Iterator[Cols]:
        cols = self.splits["train"]
        rows = rank_rows(len(cols["y"]), self.rank, self.world, self.seed, epoch, self.shuffle)
        rows = torch.from_numpy(rows).to(self.device)
        for i in range(0, len(rows), batch_size):
            idx = rows[i : i + batch_size]
            yield {c: a[idx] for c, a in cols.items()}

    def eval(self, split: str, batch_size: int = 1024) -> Iterator[Cols]:
        """This rank's part of `split` (every world-th row)."""
        cols = {c: a[self.rank :: self.world] for c, a in self.splits[split].items()}
        for i in range(0, len(cols["y"]), batch_size):
            yield {c: a[i : i + batch_size] for c, a in cols.items()}

    def close(self) -> None:
        pass


class RayDataShards:
    """This rank's Ray Data iterators: the train split (equal rows per rank), and its own part of
    validation and test (see `IngestConfig`).

    Each train epoch of a `streaming_split` starts at a barrier in Ray Data's split coordinator,
    which polls every 0.1 s, and then builds a new executor: the rank that arrives first waits out a
    poll, about 0.1 s an epoch (0.38 s against 0.26 s in memory on the digits CNN's epochs). So when
    an epoch is used up and another follows, the next one is asked for at once, in a thread
    (`Ahead`), while this rank validates; its rows and order are the same as when asked for later.
    (Asked for as soon as an epoch's last rows had arrived, while they trained, it cost more than it
    saved: 3,250-3,300 samples/s against 3,600-4,000, the fetch's threads taking the training's CPU.)

    Ray Train makes a split's coordinator (an actor, a new process) when the workers first ask for
    that split. `scored` (the splits scored at the end, test among them) are asked for as the first
    train rows arrive, so that their coordinators start during the first epoch, not when the run
    ends: test's took 1.4 s of a digits CNN's end of run on Ray Data (bench/RESULTS.md, 2026-12-06)."""

    def __init__(self, rank: int, seed: int, shuffle: bool, scored: tuple[str, ...] = ()) -> None:
        self.rank, self.seed, self.shuffle = rank, seed, shuffle
        self.ahead: Ahead | None = None
        self.unopened = scored

    def train(self, epoch: int, batch_size: int, next_epoch: int | None = None) -> Iterator[Cols]:
        """Batches of `batch_size` cut from chunks of about `CHUNK_ROWS` rows: Ray Data's iterator
        costs about as much per batch as a small model's step, so it is asked for fewer, larger
        batches (its shuffle buffer yields consecutive slices of one seeded permutation, so the rows
        mix as before), and numpy columns become tensors without a copy. `next_epoch`: the epoch
        that will be asked for next, fetched once this one is used up."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None and ahead.key != (epoch, batch_size):
            ahead.close()  # asked for an epoch that did not come (an early stop): every rank does the same
            ahead = None
        for chunk in ahead if ahead is not None else self._chunks(epoch, batch_size):
            cols = _tensors(chunk)
            if self.unopened:
                self._open()
            n = len(next(iter(cols.values())))
            for i in range(0, n, batch_size):
                yield {c: a[i : i + batch_size] for c, a in cols.items()}
        if next_epoch is not None:
            self.ahead = Ahead((next_epoch, batch_size), self._chunks(next_epoch, batch_size))

    def _open(self) -> None:
        """Ask for the splits not asked for yet (a barrier across ranks: every rank gets here alike)."""
        import ray.train

        for split in self.unopened:
            ray.train.get_dataset_shard(split)
        self.unopened = ()

    def _chunks(self, epoch: int, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        import ray.train

        return iter(ray.train.get_dataset_shard("train").iter_batches(
            batch_size=batch_size * max(1, CHUNK_ROWS // batch_size), batch_format="numpy",
            local_shuffle_buffer_size=max(4 * batch_size, SHUFFLE_BUFFER_ROWS) if self.shuffle else None,
            local_shuffle_seed=(self.seed * 100_003 + epoch * 1_009 + self.rank) if self.shuffle else None,
        ))

    def eval(self, split: str, batch_size: int = 1024) -> Iterator[Cols]:
        import ray.train

        yield from ray.train.get_dataset_shard(split).iter_torch_batches(batch_size=batch_size)

    def close(self) -> None:
        if self.ahead is not None:
            self.ahead.close()
            self.ahead = None


class Ahead:
    """An iterator whose first item is fetched in a thread from the moment it is made."""

    def __init__(self, key: tuple, it: Iterator) -> None:
        self.key, self.it = key, it
        self.first: list = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._fetch, name="raydl-next-epoch", daemon=True)
        self.thread.start()

    def _fetch(self) -> None:
        try:
            self.first = [next(self.it)]
        except StopIteration:
            pass
        except BaseException as e:  # raised where the epoch is iterated
            self.error = e

    def __iter__(self) -> Iterator:
        self.thread.join()
        if self.error is not None:
            raise self.error
        yield from self.first
        yield from self.it

    def close(self) -> None:
        self.thread.join()
        close = getattr(self.it, "close", None)
        if close is not None:
            close()


def _tensors(batch: dict[str, np.ndarray]) -> Cols:
    """numpy columns as tensors sharing their memory (a read-only array, zero-copy from the object
    store, is only read: the model never writes to its input)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
        return {c: torch.from_numpy(np.asarray(a)) for c, a in batch.items()}


def ingest_config():
    """Ray Train's DataConfig, except that validation and test are split without `equal=True`
    (which would drop rows): each rank reads its own part of them, and every row is scored once."""
    from ray.train import DataConfig

    class IngestConfig(DataConfig):
        # Ray Train V2 calls this once per dataset, when the workers first ask for its shard.
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            output = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                if name == "train":
                    parts = super().configure({name: ds}, world_size, worker_handles, worker_node_ids, **kwargs)
                else:
                    ds = ds.copy(ds)
                    ds.context.execution_options = self._resolve_execution_options(name)
                    parts = [{name: it} for it in ds.streaming_split(world_size, equal=False)]
                for i, part in enumerate(parts):
                    output[i].update(part)
            return output

    return IngestConfig(datasets_to_split="all")
