"""Run a partial-state function over DATA and merge: in-process (pyarrow batches) or Ray Data.

Both paths call the same ``partial_fn(batch) -> state`` and ``merge(a, b) -> state``; the Ray
path runs ``partial_fn`` in ``map_batches`` tasks (streaming, any cluster) and merges the
per-block states on the driver, so memory is O(features x bins) on every node.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
from collections.abc import Callable, Iterator
from functools import reduce
from typing import Any

import numpy as np
import pyarrow as pa

from raydl.drift import data as dd
from raydl.drift.errors import DriftError

ENGINES = ("auto", "local", "ray")


def choose_engine(engine: str, address: str | None) -> str:
    """'local' or 'ray'. auto: Ray when a cluster is named or already running, else local.

    Measured on a 2-core machine (bench/RESULTS.md, ## Drift): the in-process path is faster
    up to at least 1M rows because Ray's start-up (several seconds) dominates.
    """
    if engine not in ENGINES:
        raise DriftError(f"unknown engine {engine!r} (allowed: {', '.join(ENGINES)})")
    if engine != "auto":
        return engine
    if address or os.environ.get("RAY_ADDRESS"):
        return "ray"
    # Ray can only be running in this process if it was imported: don't import it (~0.35 s)
    # just to ask
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        return "ray"
    return "local"


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Connect to ``address`` / RAY_ADDRESS or start a 2-CPU local Ray; stop only what we started."""
    import ray

    started = False
    if not ray.is_initialized():
        addr = address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if addr:
            ray.init(address=addr, **kwargs)
        else:
            ray.init(num_cpus=2, **kwargs)
        started = True
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    try:
        yield
    finally:
        if started:
            ray.shutdown()


class _Pickled:
    """map_batches UDF: run ``fn`` on the block and return its pickled state as one row."""

    def __init__(self, fn: Callable[[pa.Table], Any]) -> None:
        self.fn = fn

    def __call__(self, batch: pa.Table) -> pa.Table:
        state = self.fn(batch)
        return pa.table({"state": pa.array([pickle.dumps(state)], pa.binary())})


def _read_ray(path: str, columns: list[str]):
    import ray

    fmt = dd.data_format(path)
    p = str(path) if "://" in str(path) else os.path.abspath(path)
    if fmt == "parquet":
        return ray.data.read_parquet(p, columns=columns)
    return ray.data.read_csv(p).select_columns(columns)


def run(
    path: str | os.PathLike | pa.Table,
    columns: list[str],
    partial_fn: Callable[[Any], Any],
    merge: Callable[[Any, Any], Any],
    engine: str = "local",
    batch_rows: int = dd.BATCH_ROWS,
) -> Any:
    """Fold ``partial_fn`` over every batch of ``columns`` in ``path`` with ``merge``."""
    schema = dd.schema_of(path)
    empty = partial_fn(dd.empty_batch(schema, columns))
    if engine == "local":
        with _one_blas_thread():
            return reduce(merge,
                          _threaded(partial_fn, dd.iter_batches(path, columns, batch_rows)),
                          empty)
    if engine != "ray":
        raise DriftError(f"unknown engine {engine!r} (allowed: local, ray)")
    import ray

    if isinstance(path, pa.Table):
        ds = ray.data.from_arrow(path.select(columns))
    else:
        ds = _read_ray(str(path), columns)
    ds = ds.map_batches(_Pickled(partial_fn), batch_format="pyarrow", batch_size=batch_rows)
    states = [pickle.loads(b) for b in _collect(ds)]
    return reduce(merge, states, empty)


def _one_blas_thread():
    """BLAS on one thread while batches run on our own threads: a multi-threaded BLAS on the
    small per-batch products only fights them for the cores (4x slower matmuls measured on
    2 cores). A no-op without threadpoolctl (a scikit-learn dependency)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _threaded(fn: Callable[[Any], Any], batches: Iterator[Any], workers: int | None = None):
    """Apply ``fn`` to batches on a few threads (numpy releases the GIL), in order, with at
    most ``2 * workers`` batches in flight so memory stays O(batch)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    workers = workers or min(os.cpu_count() or 1, 8)
    if workers == 1:
        yield from map(fn, batches)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for b in batches:
            pending.append(pool.submit(fn, b))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def run_dataset(ds, partial_fn: Callable[[Any], Any], merge: Callable[[Any, Any], Any], empty: Any,
                batch_rows: int = dd.BATCH_ROWS) -> Any:
    """Fold ``partial_fn`` over every batch of a Ray Dataset on the cluster; partial states are
    merged on the driver as they arrive."""
    out = empty
    for state in _collect(ds.map_batches(_Pickled(partial_fn), batch_format="pyarrow", batch_size=batch_rows)):
        out = merge(out, pickle.loads(state))
    return out


def _collect(ds) -> list[bytes]:
    out: list[bytes] = []
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        out.extend(batch.column("state").to_pylist())
    return out


def as_float(a: Any) -> np.ndarray:
    """np.float64 array view of a JSON list."""
    return np.asarray(a, dtype=np.float64)
