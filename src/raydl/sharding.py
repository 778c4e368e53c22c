"""How batches reach each worker: two interchangeable paths, chosen by the size of the data.

- `ray_data`: Ray Data datasets. A split that is materialized (computed into the object store:
  a streamed source's cached splits, or arrays prepared in the driver and put there as Arrow blocks)
  reaches the workers as its blocks (`Blocks`): each epoch every rank orders the blocks by a
  permutation seeded by (seed, epoch), takes its own equal run of rows from them, and mixes its rows
  in windows of `SHUFFLE_BUFFER_ROWS` seeded by (seed, epoch, rank); no Ray Data execution runs per
  epoch. A split that is not materialized (data larger than the object store's cache share) is
  streamed to the workers with `streaming_split` (disjoint, equal row counts per rank each epoch);
  with shuffling on, the files are read in a new seeded order each epoch and each rank shuffles its
  rows in a buffer of `SHUFFLE_BUFFER_ROWS` seeded by (seed, epoch, rank); data larger than memory
  streams through.
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Blocks:
    """A split as its blocks in the object store (a materialized Ray Data split, or arrays prepared in the
    driver and put there as Arrow blocks): their refs and row counts.

    Read this way, an epoch is a few `ray.get`s (zero-copy on the block's node) instead of a Ray Data
    execution per epoch per split behind `streaming_split`'s coordinator, whose start each epoch
    (a barrier polled every 0.1 s, a new executor) cost the digits CNN 3-6 % of its samples/s
    (bench/RESULTS.md, 2026-12-06)."""

    refs: tuple[Any, ...]
    rows: tuple[int, ...]

    @classmethod
    def of(cls, ds) -> Blocks:
        """The blocks of `ds`, a `MaterializedDataset`, listed in the driver once."""
        entries = [e for bundle in ds.iter_internal_ref_bundles() for e in bundle.blocks if e.metadata.num_rows]
        return cls(tuple(e.ref for e in entries), tuple(int(e.metadata.num_rows) for e in entries))

    @classmethod
    def put(cls, tables: list) -> Blocks:
        """Arrow tables made in the driver (`raydl.data.arrow_blocks`), put into the object store here,
        as `ray.data.from_blocks` does. Listing the blocks of a dataset made that way ran a Ray Data
        execution in the driver, which started Ray Data's stats actor and autoscaling coordinator: two
        processes, 2 CPU-seconds and 1 s of the digits CNN's first step on 2 cores (bench/RESULTS.md,
        2026-12-06). No Ray task runs here either."""
        import ray

        tables = [t for t in tables if t.num_rows]
        return cls(tuple(ray.put(t) for t in tables), tuple(t.num_rows for t in tables))

    @property
    def n(self) -> int:
        return sum(self.rows)

    def read(self, order: np.ndarray, lo: int, hi: int) -> Iterator[dict[str, np.ndarray]]:
        """Rows [lo, hi) of the blocks taken in `order`, as numpy columns, a block's piece at a time."""
        import ray
        from ray.data.block import BlockAccessor

        start = 0
        for i in order:
            a, z = max(lo, start), min(hi, start + self.rows[i])
            if a < z:
                block = BlockAccessor.for_block(ray.get(self.refs[i])).slice(a - start, z - start, copy=False)
                yield BlockAccessor.for_block(block).to_batch_format("numpy")
            start += self.rows[i]
            if start >= hi:
                return

    def train_rows(self, rank: int, world: int, seed: int, epoch: int, shuffle: bool, batch_size: int,
                   ) -> Iterator[dict[str, np.ndarray]]:
        """Rank `rank`'s rows of `epoch`, equal counts per rank (up to world - 1 rows left out, as
        `streaming_split(equal=True)` does), in chunks of whole batches but the last. With `shuffle`,
        the blocks' order is a permutation seeded by (seed, epoch) and the rank's rows are mixed in
        windows of at least `SHUFFLE_BUFFER_ROWS`, seeded by (seed, epoch, rank): the same rows in the
        same order for the same seeds, whichever rank asks first (a resumed run replays its epochs)."""
        per = self.n // world
        order = epoch_order(len(self.rows), seed, epoch, shuffle)
        rng = np.random.default_rng([seed, epoch, rank]) if shuffle else None
        return _windows(self.read(order, rank * per, (rank + 1) * per), batch_size,
                        max(4 * batch_size, SHUFFLE_BUFFER_ROWS), rng)

    def part(self, rank: int, world: int, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Rank `rank`'s part of the split in order, in batches (sizes differ by at most a row: every row once)."""
        bounds = np.linspace(0, self.n, world + 1).astype(int)
        return _windows(self.read(np.arange(len(self.rows)), int(bounds[rank]), int(bounds[rank + 1])),
                        batch_size, batch_size, None)


def _windows(pieces: Iterator[dict[str, np.ndarray]], batch_size: int, least: int,
             rng: np.random.Generator | None) -> Iterator[dict[str, np.ndarray]]:
    """The rows of `pieces` in chunks of whole batches but the last: pieces are gathered until at
    least `least` rows are held, mixed by `rng` (if any), and the whole batches among them yielded."""
    window, held = [], 0
    for piece in pieces:
        window.append(piece)
        held += len(next(iter(piece.values())))
        if held >= least:
            cols = _mixed(window, rng)
            keep = held // batch_size * batch_size
            yield {c: a[:keep] for c, a in cols.items()}
            window, held = [{c: a[keep:] for c, a in cols.items()}], held - keep
    if held:
        yield _mixed(window, rng)


def _mixed(pieces: list[dict[str, np.ndarray]], rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    cols = pieces[0] if len(pieces) == 1 else {c: np.concatenate([p[c] for p in pieces]) for c in pieces[0]}
    if rng is None:
        return cols
    perm = rng.permutation(len(next(iter(cols.values()))))
    return {c: a[perm] for c, a in cols.items()}


class RayDataShards:
    """This rank's Ray Data splits: the train split (equal rows per rank), and its own part of
    validation and test. A materialized split is read from its `blocks`; the others through Ray
    Train's dataset shards (see `IngestConfig`).

    Each streamed train epoch of a `streaming_split` starts at a barrier in Ray Data's split coordinator,
    which polls every 0.1 s, and then builds a new executor: the rank that arrives first waits out a
    poll, about 0.1 s an epoch (0.38 s against 0.26 s in memory on the digits CNN's epochs). So when
    an epoch is used up and another follows, the next one is asked for at once, in a thread
    (`Ahead`), while this rank validates; its rows and order are the same as when asked for later.
    (Asked for as soon as an epoch's last rows had arrived, while they trained, it cost more than it
    saved: 3,250-3,300 samples/s against 3,600-4,000, the fetch's threads taking the training's CPU.)

    Ray Train makes a split's coordinator (an actor, a new process) when the workers first ask for
    that split. Those of `scored` (the splits scored at the end) that are not cached (test, when it
    does not fit beside train and validation: `Streamed.cached_splits`) are asked for as the first
    train rows arrive, so that their coordinators start during the first epoch, not when the run
    ends: test's took 1.4 s of a digits CNN's end of run on Ray Data (bench/RESULTS.md, 2026-12-06)."""

    def __init__(self, rank: int, world: int, seed: int, shuffle: bool, scored: tuple[str, ...] = (),
                 blocks: dict[str, Blocks] | None = None) -> None:
        self.rank, self.world, self.seed, self.shuffle = rank, world, seed, shuffle
        self.blocks = blocks or {}
        self.ahead: Ahead | None = None
        self.unopened = tuple(s for s in scored if s not in self.blocks)

    def train(self, epoch: int, batch_size: int, next_epoch: int | None = None) -> Iterator[Cols]:
        """Batches of `batch_size`, from the split's blocks when it is cached (`Blocks.train_rows`),
        else cut from chunks of about `CHUNK_ROWS` rows: Ray Data's iterator costs about as much per
        batch as a small model's step, so it is asked for fewer, larger batches (its shuffle buffer
        yields consecutive slices of one seeded permutation, so the rows mix as before), and numpy
        columns become tensors without a copy. `next_epoch`: the epoch that will be asked for next,
        fetched once this one is used up (streamed splits only)."""
        cached = "train" in self.blocks
        if cached:
            chunks = self.blocks["train"].train_rows(self.rank, self.world, self.seed, epoch, self.shuffle, batch_size)
        else:
            chunks = self._streamed(epoch, batch_size)
        for batch in _batches(chunks, batch_size):
            if self.unopened:
                self._open()
            yield batch
        if next_epoch is not None and not cached:
            self.ahead = Ahead((next_epoch, batch_size), self._chunks(next_epoch, batch_size))

    def _streamed(self, epoch: int, batch_size: int) -> Iterable[dict[str, np.ndarray]]:
        """The streamed epoch's chunks: the epoch fetched ahead when it is the one asked for."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None and ahead.key == (epoch, batch_size):
            return ahead
        if ahead is not None:
            ahead.close()  # asked for an epoch that did not come (an early stop): every rank does the same
        return self._chunks(epoch, batch_size)

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

        if split in self.blocks:
            yield from _batches(self.blocks[split].part(self.rank, self.world, batch_size), batch_size)
            return
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


def _batches(chunks: Iterable[dict[str, np.ndarray]], batch_size: int) -> Iterator[Cols]:
    """Batches of `batch_size` rows cut from each chunk (tensors sharing the chunk's memory)."""
    for chunk in chunks:
        cols = _tensors(chunk)
        n = len(next(iter(cols.values())))
        for i in range(0, n, batch_size):
            yield {c: a[i : i + batch_size] for c, a in cols.items()}


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
