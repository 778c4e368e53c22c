"""Data windows: where they come from, in which order, and each one's train part and holdout.

A window is one partition of new labelled data: a Parquet/CSV file or a directory of them. The
pipeline's `data.location` is a directory (its entries, not hidden, ordered by name with the
numbers in names compared as numbers, so `2026-12-01`, `part-9`, `part-10` come in order), a glob,
or an explicit list (kept in its order); a directory may be an object-store prefix (`s3://...`). Which windows are done is kept in the state database
(`raydl.pipeline.state`), so the next window is the first one not done.
"""

from __future__ import annotations

import glob
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from raydl.errors import DataError

SUFFIXES = (".parquet", ".pq", ".csv")


@dataclass(frozen=True)
class Window:
    name: str
    path: str


def _natural(name: str) -> list:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def _name(path: str) -> str:
    p = Path(path.rstrip("/"))
    return p.name[: -len(p.suffix)] if p.suffix in SUFFIXES else p.name


def _usable(p: Path) -> bool:
    return not p.name.startswith((".", "_")) and (p.is_dir() or p.suffix in SUFFIXES)


def list_windows(location: str | list[str]) -> list[Window]:
    """Every window at `location`, in processing order (a DataError when the location is missing)."""
    if isinstance(location, list):
        paths = list(location)
        for p in paths:
            if "://" not in p and not Path(p).expanduser().exists():
                raise DataError(f"data.location: no file or directory at {p!r} (a window the pipeline lists)")
    elif "://" in location:  # an object-store prefix (s3://bucket/windows/)
        from raydl import storage

        names = [n for n in storage.listdir(location) if not n.startswith((".", "_"))
                 and (Path(n).suffix in SUFFIXES or not Path(n).suffix)]
        if not names:
            raise DataError(f"data.location: nothing under {location!r} (it does not exist or is empty); "
                            "give a prefix that holds the windows")
        paths = sorted((storage.join(location, n) for n in names), key=lambda p: _natural(_name(p)))
    elif any(c in location for c in "*?["):
        paths = sorted((p for p in glob.glob(str(Path(location).expanduser())) if _usable(Path(p))),
                       key=lambda p: _natural(_name(p)))
    else:
        root = Path(location).expanduser()
        if not root.is_dir():
            what = "is a file, not a directory of windows" if root.exists() else "does not exist"
            raise DataError(f"data.location: {location!r} {what}; give a directory of windows, a glob or a list")
        paths = sorted((str(p) for p in root.iterdir() if _usable(p)), key=lambda p: _natural(_name(p)))
    windows = [Window(_name(p), p) for p in paths]
    seen: set[str] = set()
    for w in windows:
        if w.name in seen:
            raise DataError(f"data.location: two windows are named {w.name!r}; window names must be unique")
        seen.add(w.name)
    return windows


def find(windows: list[Window], name: str) -> Window:
    for w in windows:
        if w.name == name:
            return w
    shown = ", ".join(w.name for w in windows[:20]) or "none"
    raise DataError(f"--window: no window named {name!r} in data.location; windows: {shown}")


def read_window(w: Window, features: list[str], label: str) -> pa.Table:
    """The window's rows, checked: not empty, and holding the model's feature and label columns."""
    from raydl.datasets import read_table

    table = read_table(w.path, where=f"window {w.name!r}")
    if table.num_rows == 0:
        raise DataError(f"window {w.name!r} ({w.path}) has no rows; a window needs labelled rows")
    missing = [c for c in [*features, label] if c not in table.column_names]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise DataError(f"window {w.name!r} ({w.path}): its columns do not match the model: missing {shown} "
                        f"(the model takes {len(features)} features and label {label!r}; the window has "
                        f"{', '.join(table.column_names[:8])}{', ...' if table.num_columns > 8 else ''})")
    return table.select([*features, label])


def split_holdout(table: pa.Table, share: float, seed: int, window: str) -> tuple[pa.Table, pa.Table]:
    """(train part, holdout): a seeded draw of `share` of the rows, the same for the same window."""
    rng = np.random.default_rng([seed, zlib.crc32(window.encode())])
    n = table.num_rows
    k = max(1, min(n - 1, round(share * n))) if n > 1 else 0
    order = rng.permutation(n)
    hold = np.sort(order[:k])
    train = np.sort(order[k:])
    return table.take(pa.array(train)), table.take(pa.array(hold))
