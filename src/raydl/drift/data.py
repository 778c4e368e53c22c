"""Reading DATA (Parquet/CSV file or directory, local path or pyarrow filesystem URI).

Batches stream through ``iter_batches`` so memory stays O(batch); the same column rules
(``column_kinds``, ``numeric_column``, ``category_column``) serve the Ray path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

if TYPE_CHECKING:  # pyarrow.dataset imports pandas (~0.2 s): only for CSV / directories / URIs
    import pyarrow.dataset as pads

from raydl.drift.errors import DataError

NUMERIC = "numeric"
CATEGORICAL = "categorical"
BATCH_ROWS = 65_536


def _resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    s = str(path)
    if "://" in s:
        try:
            return pafs.FileSystem.from_uri(s)
        except (pa.ArrowInvalid, ValueError) as e:
            raise DataError(f"cannot open data URI {s!r}: {e}") from None
    return pafs.LocalFileSystem(), str(Path(s).resolve())


def data_format(path: str | os.PathLike) -> str:
    """'parquet' or 'csv', from the file suffix (or the first data file of a directory)."""
    fs, p = _resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"data path {str(path)!r} does not exist")
    names = [p]
    if info.type == pafs.FileType.Directory:
        sel = pafs.FileSelector(p, recursive=True)
        names = sorted(i.path for i in fs.get_file_info(sel) if i.type == pafs.FileType.File)
    for n in names:
        low = n.lower()
        if low.endswith((".parquet", ".pq")):
            return "parquet"
        if low.endswith((".csv", ".csv.gz")):
            return "csv"
    raise DataError(f"no .parquet or .csv file at {str(path)!r} (allowed: Parquet or CSV file/dir)")


def open_dataset(path: str | os.PathLike) -> pads.Dataset:
    """A pyarrow dataset over ``path``; raises DataError when it cannot be read."""
    import pyarrow.dataset as pads

    fmt = data_format(path)
    fs, p = _resolve(path)
    try:
        return pads.dataset(p, format=fmt, filesystem=fs, exclude_invalid_files=False)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"cannot read {fmt} data at {str(path)!r}: {e}") from None


def kind_of(t: pa.DataType) -> str | None:
    """NUMERIC, CATEGORICAL or None (unsupported) for an Arrow type."""
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return NUMERIC
    if pa.types.is_null(t):
        return NUMERIC  # an all-null column; reported as all-missing later
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t):
        return CATEGORICAL
    if pa.types.is_dictionary(t):
        return kind_of(t.value_type)
    return None


def column_kinds(schema: pa.Schema, features: list[str] | None) -> dict[str, str]:
    """Kind of every feature (all columns when ``features`` is None); DataError on a bad one."""
    names = list(schema.names) if features is None else list(features)
    missing = [f for f in names if f not in schema.names]
    if missing:
        raise DataError(
            f"features {missing} are not columns of the data (columns: {schema.names})"
        )
    if not names:
        raise DataError("no features to profile: pass --features or data with columns")
    kinds, bad = {}, []
    for f in names:
        k = kind_of(schema.field(f).type)
        if k is None:
            bad.append(f"{f}:{schema.field(f).type}")
        kinds[f] = k
    if bad:
        raise DataError(
            f"unsupported column types {bad} (allowed: integer, float, string, bool); "
            "pick features with --features"
        )
    return kinds


def check_schema(schema: pa.Schema, kinds: dict[str, str]) -> None:
    """Current data must hold every profiled feature with a compatible type."""
    missing = [f for f in kinds if f not in schema.names]
    if missing:
        raise DataError(
            f"data lacks profiled features {missing} (data columns: {schema.names})"
        )
    bad = []
    for f, k in kinds.items():
        got = kind_of(schema.field(f).type)
        if k == NUMERIC and got != NUMERIC:
            bad.append(f"{f} is {schema.field(f).type}, profile expects numeric")
        if got is None:
            bad.append(f"{f} is {schema.field(f).type}, unsupported")
    if bad:
        raise DataError("wrong column types: " + "; ".join(bad))


def numeric_column(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """float64 values with nulls (and +-inf) as NaN."""
    out = np.empty(len(col), dtype=np.float64)
    fill_numeric(out, col)
    return out


def fill_numeric(out: np.ndarray, col: pa.ChunkedArray | pa.Array) -> None:
    """Write ``numeric_column(col)`` into the 1-d float64 array ``out`` (one copy at most)."""
    if pa.types.is_null(col.type):
        out.fill(np.nan)
        return
    if not pa.types.is_float64(col.type):
        col = pc.cast(col, pa.float64())
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    i = 0
    for c in chunks:
        n = len(c)
        if n == 0:
            continue
        # the values buffer as a numpy view (Array.to_numpy imports pandas), then one copy
        validity, data = c.buffers()[:2]
        off = c.offset
        out[i:i + n] = np.frombuffer(data, dtype=np.float64, count=off + n)[off:]
        if c.null_count:  # nulls -> NaN from the validity bitmap
            bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), count=off + n,
                                 bitorder="little")[off:]
            out[i:i + n][bits == 0] = np.nan
        i += n
    bad = ~np.isfinite(out)
    if bad.any():  # +-inf counts as missing (NaN stays NaN)
        out[bad] = np.nan


def int_values(arr: pa.Array) -> np.ndarray:
    """int64 copy of a null-free integer array, read from its buffer (no pandas import)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if len(arr) == 0:
        return np.empty(0, dtype=np.int64)
    if arr.null_count:
        raise ValueError("int_values needs an array without nulls")
    sign = "u" if pa.types.is_unsigned_integer(arr.type) else ""
    dt = np.dtype(f"{sign}int{arr.type.bit_width}")
    off = arr.offset
    return np.frombuffer(arr.buffers()[1], dtype=dt, count=off + len(arr))[off:].astype(np.int64)


def numeric_block(batch: pa.RecordBatch | pa.Table, names: list[str],
                  scratch: np.ndarray | None = None) -> np.ndarray:
    """[len(names), rows] float64 (feature-major: each feature's values contiguous), NaN for
    nulls and +-inf. Row j of the result is ``numeric_column(batch.column(names[j]))``.

    With ``scratch`` (a 1-d float64 array at least that large) the block is written into it
    and is a view of it: valid until the caller's next use of ``scratch``.
    """
    shape = (len(names), batch.num_rows)
    if scratch is not None and scratch.size >= shape[0] * shape[1]:
        x = scratch[: shape[0] * shape[1]].reshape(shape)
    else:
        x = np.empty(shape, dtype=np.float64)
    for j, n in enumerate(names):
        fill_numeric(x[j], batch.column(n))
    return x


def string_array(values: list[str]) -> pa.Array:
    """``pa.array(values, pa.string())`` built from buffers: ``pa.array`` on a Python list
    imports pandas (~0.2 s) to check for pandas objects."""
    enc = [str(v).encode("utf-8") for v in values]
    offsets = np.zeros(len(enc) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(e) for e in enc])
    if offsets[-1] >= 2**31:
        return pa.array(values, pa.string())
    return pa.StringArray.from_buffers(len(enc), pa.py_buffer(offsets.astype(np.int32).tobytes()),
                                       pa.py_buffer(b"".join(enc)))


def empty_batch(schema: pa.Schema, columns: list[str]) -> pa.RecordBatch:
    """A zero-row batch of ``columns`` (``Schema.empty_table`` imports pandas)."""
    try:
        return pa.RecordBatch.from_arrays(
            [pa.nulls(0, schema.field(c).type) for c in columns], names=columns)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError):
        return schema.empty_table().select(columns)


def category_column(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """String values (nulls kept as nulls); booleans and numbers become their text."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = pc.cast(col, pa.string())
    return col



def _local_parquet_file(path: str | os.PathLike) -> str | None:
    """The resolved path when ``path`` is one local Parquet file, else None."""
    s = str(path)
    if "://" in s or not s.lower().endswith((".parquet", ".pq")):
        return None
    p = Path(s).resolve()
    return str(p) if p.is_file() else None


def iter_batches(
    path: str | os.PathLike | pa.Table, columns: list[str], batch_rows: int = BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Stream record batches of ``columns`` from ``path`` (or an in-memory table)."""
    if isinstance(path, pa.Table):
        yield from path.select(columns).to_batches(max_chunksize=batch_rows)
        return
    local = _local_parquet_file(path)
    try:
        if local is not None:
            # One local file: ParquetFile reads one row group at a time (memory O(row group),
            # whatever the file size), column-projected, without the dataset scanner's
            # readahead or its pandas import. No pre-buffering: it held whole files.
            import pyarrow.parquet as pq

            with pq.ParquetFile(local, pre_buffer=False) as f:
                # row group by row group: the same batch boundaries as the dataset scanner
                # (batches never span row groups), so the bottom-k sample keys are unchanged
                for i in range(f.num_row_groups):
                    yield from f.iter_batches(batch_size=batch_rows, row_groups=[i],
                                              columns=columns, use_threads=False)
            return
        import pyarrow.dataset as pads

        ds = open_dataset(path)
        opts = None
        if isinstance(ds.format, pads.ParquetFileFormat):
            # no pre-buffering: it held whole files in memory (408 vs 239 MB RSS at 1M rows)
            opts = pads.ParquetFragmentScanOptions(pre_buffer=False)
        yield from ds.to_batches(columns=columns, batch_size=batch_rows, use_threads=True,
                                 batch_readahead=1, fragment_readahead=1,
                                 fragment_scan_options=opts)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"cannot read data at {str(path)!r}: {e}") from None


def count_rows(path: str | os.PathLike | pa.Table) -> int | None:
    """Number of rows when known without a scan (a table, one local Parquet file), else None."""
    if isinstance(path, pa.Table):
        return path.num_rows
    local = _local_parquet_file(path)
    if local is None:
        return None
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(local).metadata.num_rows
    except (pa.ArrowInvalid, OSError):
        return None  # the scan reports it


def schema_of(path: str | os.PathLike | pa.Table) -> pa.Schema:
    """Schema of the data at ``path`` (or of an in-memory table)."""
    if isinstance(path, pa.Table):
        return path.schema
    local = _local_parquet_file(path)
    if local is not None:
        import pyarrow.parquet as pq

        try:
            return pq.read_schema(local)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"cannot read parquet data at {str(path)!r}: {e}") from None
    return open_dataset(path).schema
