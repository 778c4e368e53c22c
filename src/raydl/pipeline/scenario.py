"""The seeded digits scenario of `pipelines/digits_continual.yaml`: four windows of scikit-learn's
8x8 digits as Parquet files (64 pixel columns px00..px63, label `digit`).

    01-baseline      clean digits, every class             -> the first champion
    02-shifted       the same digits with sensor noise     -> drift -> retrain -> promoted
    03-like-shifted  more noisy digits, like 02            -> no drift -> skipped
    04-bad-retrain   noisy digits of classes 0-4 only, moved one pixel right (a new camera)
                     -> drift; naive fine-tuning forgets 5-9 -> rejected

    python -m raydl.pipeline.scenario OUT_DIR [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa

from raydl.paths import write_atomic

NOISE = 3.0  # Gaussian pixel noise of the shifted windows (pixels are 0..16)
SIZES = {"01-baseline": 700, "02-shifted": 450, "03-like-shifted": 450, "04-bad-retrain": 450}


def _table(x: np.ndarray, y: np.ndarray) -> pa.Table:
    cols = {f"px{i:02d}": pa.array(x[:, i].astype(np.float64)) for i in range(x.shape[1])}
    return pa.table({**cols, "digit": pa.array(y.astype(np.int64))})


def digits_windows(out: str | Path, seed: int = 0) -> list[Path]:
    """Write the four windows under `out` (atomically, one Parquet file each); their paths."""
    import pyarrow.parquet as pq

    from raydl.datasets.bundled import load_digits

    x, y = load_digits()
    rng = np.random.default_rng(seed)
    out = Path(out)
    paths = []
    for name, n in SIZES.items():
        pool = np.flatnonzero(y < 5) if name == "04-bad-retrain" else np.arange(len(y))
        idx = rng.choice(pool, size=n, replace=False)
        xs = x[idx].copy()
        if name == "04-bad-retrain":
            img = xs.reshape(-1, 8, 8)
            img[:, :, 1:], img[:, :, 0] = img[:, :, :-1].copy(), 0.0
            xs = img.reshape(-1, 64)
        if name != "01-baseline":
            xs = np.clip(xs + rng.normal(0.0, NOISE, xs.shape), 0.0, 16.0)
        buf = pa.BufferOutputStream()
        pq.write_table(_table(xs, y[idx]), buf)
        paths.append(write_atomic(out / f"{name}.parquet", buf.getvalue().to_pybytes()))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raydl.pipeline.scenario", description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for path in digits_windows(a.out, a.seed):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
