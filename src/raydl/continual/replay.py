"""Experience replay: a bounded buffer of past rows mixed into each new experience's train rows.

The buffer is kept with each model as `replay_buffer.parquet` (its rows, with the number of rows
the buffer has seen in the file's metadata), so the next experience, in this process or a new
one, continues it from the model it starts from. Two ways to keep it bounded:
- reservoir (Vitter's algorithm R): every row seen so far is in the buffer with the same
  probability, size / seen;
- class_balanced: the slots are shared equally among the classes seen (a class with fewer rows
  than its share leaves its spare slots to the others), rows of a class picked at random.
The pure functions (`reservoir`, `class_balanced`) take and return row indices; the strategy
reads and writes the tables.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from raydl.continual import OwnRows, register_strategy
from raydl.errors import DataError, SpecError
from raydl.paths import write_atomic
from raydl.spec import JobSpec, Section

BUFFER = "replay_buffer.parquet"
SEEN = b"raydl.replay.seen"
MAX_SIZE = 100_000_000
MEMORY_SHARE = 0.5  # of the memory available now, at most, for the buffer's rows


class ReplayParams(Section):
    size: int = Field(500, ge=1, le=MAX_SIZE, description="rows the buffer holds at most")
    policy: Literal["reservoir", "class_balanced"] = "reservoir"


def reservoir(kept: int, seen: int, new: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Algorithm R over `new` more rows: an array of length min(size, kept + new) whose entry s is
    the row in buffer slot s, as an index into [old buffer rows (kept) ..., new rows ...]."""
    slots = np.arange(kept)
    out = list(slots)
    for k in range(new):
        row = kept + k
        if len(out) < size:
            out.append(row)
            continue
        j = int(rng.integers(0, seen + k + 1))
        if j < size:
            out[j] = row
    return np.asarray(out, dtype=np.int64)


def class_balanced(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most `size` rows, the slots shared equally among the classes in `labels`
    (water-filling: a class with fewer rows than its share keeps all of them)."""
    classes, counts = np.unique(labels, return_counts=True)
    order = np.argsort(counts, kind="stable")
    left, picked = size, []
    for n, ci in enumerate(order):
        share = left // (len(order) - n)
        rows = np.flatnonzero(labels == classes[ci])
        take = min(len(rows), share)
        picked.append(rng.choice(rows, size=take, replace=False) if take < len(rows) else rows)
        left -= take
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def read_buffer(model_dir: Path | None) -> tuple[pa.Table | None, int]:
    """The buffer kept with a model directory, and the number of rows it has seen (None, 0 if none)."""
    if model_dir is None or not (Path(model_dir) / BUFFER).is_file():
        return None, 0
    path = Path(model_dir) / BUFFER
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a replay buffer written by raydl ({str(e).splitlines()[0]}); train the previous experience again") from None
    meta = table.schema.metadata or {}
    return table.replace_schema_metadata(None), int(meta.get(SEEN, table.num_rows))


def write_buffer(model_dir: Path, table: pa.Table, seen: int) -> Path:
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({SEEN: str(seen).encode()}), sink)
    return write_atomic(Path(model_dir) / BUFFER, sink.getvalue())


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable), or the physical memory where that is unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_size(size: int, n_columns: int, memory: int | None = None) -> None:
    """A buffer whose rows (8 bytes a value) would take more than half the available memory is refused."""
    memory = available_memory() if memory is None else memory
    need = size * n_columns * 8
    if need > MEMORY_SHARE * memory:
        most = int(MEMORY_SHARE * memory // (n_columns * 8))
        raise SpecError(f"continual.size: a replay buffer of {size:,} rows x {n_columns} columns needs {need / 2**30:.1f} GiB; "
                        f"this machine has {memory / 2**30:.1f} GiB available (a buffer may use half): at most {most:,} rows")


@dataclass(frozen=True)
class Replay(OwnRows):
    params: ReplayParams
    seed: int

    def penalties(self, model) -> list:
        return []

    def consolidations(self) -> list:
        return []

    def train_rows(self, stream, i: int, previous: Path | None) -> pa.Table:
        pool = stream.experiences[i].pool
        check_size(self.params.size, pool.num_columns)
        buffer, _ = read_buffer(previous)
        if buffer is None:
            return pool
        return pa.concat_tables([pool, buffer.select(pool.column_names).cast(pool.schema)])

    def after(self, stream, i: int, model_dir: Path, previous: Path | None) -> None:
        """The buffer after this experience's own rows (not the replayed ones) were offered to it."""
        pool = stream.experiences[i].pool
        buffer, seen = read_buffer(previous)
        kept = buffer.select(pool.column_names).cast(pool.schema) if buffer is not None else pool.slice(0, 0)
        rows = pa.concat_tables([kept, pool])
        rng = np.random.default_rng([self.seed, i])
        if self.params.policy == "reservoir":
            idx = reservoir(kept.num_rows, seen, pool.num_rows, self.params.size, rng)
        else:
            idx = class_balanced(rows.column(stream.label).to_numpy(zero_copy_only=False), self.params.size, rng)
        write_buffer(model_dir, rows.take(pa.array(idx)), seen + pool.num_rows)


@register_strategy("replay", ReplayParams)
def _replay(p: ReplayParams, spec: JobSpec) -> Replay:
    """Experience replay: a bounded buffer of past rows (reservoir or class-balanced) mixed into each experience."""
    return Replay(p, spec.training.seed)
