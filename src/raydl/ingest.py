"""Which way the rows reach the workers, decided before Ray starts.

- In memory (`raydl.data.prepare`): built-in datasets and small files are read on the driver,
  split, standardised, and put in the object store once (see `raydl.sharding`).
- Streamed (`raydl.source`): a Parquet/CSV source with `data.loader: ray_data`, or with `auto`
  and more than `sharding.IN_MEMORY_MAX_BYTES` of decoded features, is read by Ray Data on the
  cluster. The driver checks the schema before Ray starts, then runs one distributed statistics
  pass (split sizes, scaling, classes, the data checks); the workers receive model-ready batches.

Both paths split by `raydl.split` (each row's content hashed with the seed), so the same rows
land in train, validation and test either way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from raydl.data import Preprocessing, fractions
from raydl.datasets import DATASETS, _format_of
from raydl.drift.partial import ProfilePartial
from raydl.errors import RaydlError
from raydl.sharding import IN_MEMORY_MAX_BYTES
from raydl.source import Source, SourceStats, open_source
from raydl.source_batches import PROFILE
from raydl.spec import DataSpec, JobSpec

# A streamed run keeps its splits in the object store when they take at most this share of it
# (`Streamed.cached_splits`); the rest is left to Ray Data's streaming and spilling.
CACHE_FRACTION = 0.25


def decoded_bytes(spec: DataSpec) -> int:
    """The size of the feature matrix as float64, from Parquet footers or CSV file sizes (no rows read)."""
    import pyarrow.dataset as pds

    from raydl import storage

    kind = _format_of(spec.source, spec.format)
    fs, path = storage.filesystem(spec.source)
    ds = pds.dataset(path, format=kind, filesystem=fs)
    if kind == "parquet":
        return ds.count_rows() * max(len(ds.schema.names) - 1, 1) * 8
    return sum(info.size for info in fs.get_file_info(ds.files))


def streams(spec: DataSpec) -> bool:
    if spec.source in DATASETS or spec.loader == "in_memory":
        return False
    if spec.loader == "ray_data":
        return True
    try:
        return decoded_bytes(spec) > IN_MEMORY_MAX_BYTES
    except (OSError, pa.ArrowException, RaydlError):
        return False  # unreadable: data.prepare names the problem


@dataclass(frozen=True)
class Streamed:
    """A lazily read source; `stats` (and the drift profile's first pass) once the distributed
    pass has run."""

    source: Source
    stats: SourceStats | None = None
    profile_first: ProfilePartial | None = None

    def with_stats(self, spec: JobSpec) -> Streamed:
        d = spec.data
        stats, first = self.source.stats_and_profile(d.seed, fractions(d), d.standardize, d.task, spec.scaling.num_workers)
        return replace(self, stats=stats, profile_first=first)

    def write_profile(self, spec: JobSpec, mdir: Path, model_dir: Path | None) -> Path:
        """The drift reference profile of the train split: its first pass came with the statistics
        pass; the second (every train row counted into the bins) runs on the cluster now."""
        from raydl.drift import engine
        from raydl.drift.data import NUMERIC
        from raydl.drift.ood import ModelScorer
        from raydl.drift.partial import CountPass
        from raydl.drift.profile import finish_profile

        features = self.stats.features
        raw = self.source.raw_split(spec.data.seed, fractions(spec.data), part=0)
        empty_batch = pa.table({f: pa.array([], pa.float64()) for f in features})

        def count(cp: CountPass):
            return engine.run_dataset(raw, cp, lambda a, b: a.merge(b), cp(empty_batch))

        model = ModelScorer(model_dir) if model_dir is not None else None
        prof = finish_profile(self.profile_first, dict.fromkeys(features, NUMERIC), features if model else [],
                              f"{spec.data.source} (train split)", PROFILE, count, model,
                              None if model_dir is None else str(model_dir))
        return prof.save(mdir / "profile.json")

    @property
    def prep(self) -> Preprocessing:
        return self.stats.preprocessing()

    def describe(self) -> str:
        st = self.stats
        return (f"{st.n_train}/{st.n_val}/{st.n_test} rows streamed by Ray Data from {self.source.kind} files, "
                f"{len(st.features)} features, {st.task}")

    @property
    def fingerprint(self) -> str:
        return self.stats.fingerprint

    def datasets(self, spec: JobSpec, cache: bool = False) -> dict:
        """Ray Data datasets per split, lazy. With `cache`, the splits `cached_splits` names are
        computed once into the object store (Ray's advice for data that fits there): later epochs
        read those blocks instead of reading, decoding and splitting every file again. A cached
        train split is still shuffled per epoch, by its reader (`sharding.Blocks`): the blocks'
        order, seeded, changes with every epoch."""
        d = spec.data
        cached = self.cached_splits(spec) if cache else ()
        shuffle = spec.training.shuffle
        parts = self.source.split_datasets(self.stats, d.seed, fractions(d), shuffle and "train" not in cached)
        for name in cached:
            # Stored in file order, not in the order the reads finish (Ray Data's default): the reader's
            # seeded block order (`sharding.Blocks`) is then a function of the seed alone.
            parts[name].context.execution_options.preserve_order = True  # this dataset's own context
            parts[name] = parts[name].materialize()
        return {k: v for k, v in parts.items() if k != "test" or self.stats.n_test}

    def cached_splits(self, spec: JobSpec) -> tuple[str, ...]:
        """The splits kept in the object store: none for one epoch or with `data.cache: false`; else
        train and validation (each epoch reads both) when their model-ready rows (float32 features, an
        8-byte target) take at most `CACHE_FRACTION` of the cluster's object store, and test with
        them when it fits too.
        Test is read only once, at the end, but streaming it needs Ray Train's dataset manager and a
        split coordinator, two more processes, made at a barrier before the first step
        (`RayDataShards`), and a Ray Data execution at the end. Cached, the compute MLP's first step
        took 13.4 s against 14.9 s and its end of run 2.9 s against 5.3 s (bench/RESULTS.md, 2026-12-06)."""
        import ray

        if spec.training.epochs < 2 or not spec.data.cache:
            return ()
        st, budget = self.stats, CACHE_FRACTION * ray.cluster_resources().get("object_store_memory", 0)
        if (st.n_train + st.n_val) * self.row_bytes > budget:
            return ()
        if st.n_test and (st.n_train + st.n_val + st.n_test) * self.row_bytes <= budget:
            return ("train", "val", "test")
        return ("train", "val")

    @property
    def row_bytes(self) -> int:
        """A model-ready row's size in the object store: float32 features and an 8-byte target."""
        return len(self.stats.features) * 4 + 8

    def sample_inputs(self, spec: JobSpec, rows: int = 256) -> dict[str, np.ndarray]:
        """Up to `rows` model-ready train inputs (no target), e.g. to time inference: the first rows
        of the drift profile's sample from the statistics pass, scaled as the workers' batches are
        (taking them from the data cost a Ray Data execution, 2-5 s, at the end of every run)."""
        return {"x": self.prep.transform(self.profile_first.sample[:, :rows].T)}


def plan(spec: JobSpec):
    """`Streamed` (schema checked, no rows read) or None for the in-memory path."""
    return Streamed(open_source(spec.data)) if streams(spec.data) else None
