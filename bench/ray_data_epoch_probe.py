"""What one epoch of Ray Data costs on tiny data, with no training: 1,078 rows of 64 float32
features (the digits train split's size), materialized, iterated 8 times as raydl's workers do
(4,096-row chunks, a 16k-row local shuffle buffer seeded per epoch), through Ray Train's
`streaming_split(2, equal=True)` from two threads, then through one plain iterator.

    python bench/ray_data_epoch_probe.py

Prints milliseconds per epoch for rank 0 (bench/RESULTS.md, "Performance #14", 2026-12-05).
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import ray


def epochs(ds, split: bool, n: int = 8) -> list[float]:
    its = ds.streaming_split(2, equal=True) if split else [ds.iterator()]
    times: list[list[float]] = [[] for _ in its]

    def consume(rank: int) -> None:
        for epoch in range(n):
            t0 = time.perf_counter()
            for _ in its[rank].iter_batches(batch_size=4096, batch_format="numpy", local_shuffle_buffer_size=16384,
                                            local_shuffle_seed=epoch):
                pass
            times[rank].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=consume, args=(r,)) for r in range(len(its))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times[0]


def main() -> None:
    ray.init(num_cpus=3, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rng = np.random.default_rng(0)
    x, y = rng.random((1078, 64), dtype=np.float32), rng.integers(0, 10, 1078)
    ds = ray.data.from_items([{"x": x[i], "y": int(y[i])} for i in range(len(y))]).materialize()
    for name, split in (("streaming_split(2, equal=True)", True), ("one iterator, no split", False)):
        print(f"{name}: ms per epoch (rank 0):", [round(s * 1000) for s in epochs(ds, split)])
    ray.shutdown()


if __name__ == "__main__":
    main()
