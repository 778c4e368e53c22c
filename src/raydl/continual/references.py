"""The upper references: cumulative (each experience trains on every experience's rows so far,
from the previous model) and joint (one run on the whole stream at once, the offline bound)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from raydl.continual import Naive, NaiveParams, register_strategy
from raydl.spec import JobSpec


def rows_so_far(stream, last: int) -> pa.Table:
    """The train pools of experiences 0..last, as one table."""
    return pa.concat_tables([e.pool for e in stream.experiences[: last + 1]], promote_options="default")


@dataclass(frozen=True)
class Cumulative(Naive):
    def train_rows(self, stream, i: int, previous: Path | None) -> pa.Table:
        return rows_so_far(stream, i)


@dataclass(frozen=True)
class Joint(Naive):
    trains_once = True

    def train_rows(self, stream, i: int, previous: Path | None) -> pa.Table:
        return rows_so_far(stream, len(stream) - 1)


@register_strategy("cumulative", NaiveParams)
def _cumulative(p: NaiveParams, spec: JobSpec) -> Cumulative:
    """Train each experience on the rows of every experience so far (upper reference)."""
    return Cumulative()


@register_strategy("joint", NaiveParams)
def _joint(p: NaiveParams, spec: JobSpec) -> Joint:
    """One run on the whole stream at once (the offline upper bound; its matrix has one row)."""
    return Joint()
