"""Rules for a source's label and id columns, shared by the in-memory path (`raydl.data`) and the
streamed one (`raydl.source_batches`). Light on purpose: every Ray Data map task imports it, and a
fresh task worker that imported torch through `raydl.data` spent 1.5-3 s of a core doing so."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raydl.errors import DataError

MAX_CLASSES = 1000


def value_type(t: pa.DataType) -> pa.DataType:
    """The type of a column's values (a dictionary-encoded column's value type)."""
    return t.value_type if pa.types.is_dictionary(t) else t


def label_type_ok(t: pa.DataType) -> bool:
    t = value_type(t)
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t))


def id_values(col: pa.ChunkedArray) -> np.ndarray:
    """A declared id column's values (integers or strings; no missing values)."""
    if col.null_count:
        raise DataError(f"data.id_column: {col.null_count} row(s) have no id")
    t = value_type(col.type)
    if not (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise DataError(f"data.id_column: the id column has type {t}; an id must be an integer or a string")
    return col.cast(t).to_numpy(zero_copy_only=False)
