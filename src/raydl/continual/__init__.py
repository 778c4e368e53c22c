"""Continual learning: strategies that let a run started from a model directory learn new data
without forgetting what it knew.

A strategy is a registered name with typed parameters: the spec's `continual:` section is
`{strategy, ...that strategy's parameters}` (checked when the spec is loaded, like a model's). A
run with a strategy starts from the previous model (`finetune.from`); the strategy may add penalty
terms to the loss (`penalties(model)`, e.g. EWC's quadratic anchor or LwF's distillation) and
consolidations that run once on the best weights when training ends (`consolidations()`, e.g.
EWC's diagonal Fisher), whose sums the loop reduces across ranks and saves with the model as
`extras.pt`. Its data side (a replay buffer mixed into the next experience) belongs to the stream
that runs experience after experience. The loop knows none of their names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from raydl.errors import DataError
from raydl.registry import Registry
from raydl.registry import param_errors as registry_param_errors
from raydl.spec import JobSpec, Section

if TYPE_CHECKING:
    import pyarrow as pa

    from raydl.continual.stream import Stream

EXTRAS = "extras.pt"  # tensors a strategy left with a model directory


class Strategy(Protocol):
    trains_once: bool

    def penalties(self, model: nn.Module) -> list: ...
    def consolidations(self) -> list: ...
    def train_rows(self, stream: Stream, i: int, previous: Path | None) -> pa.Table: ...
    def after(self, stream: Stream, i: int, model_dir: Path, previous: Path | None) -> None: ...


class OwnRows:
    """The data side most strategies share: an experience trains on its own rows; nothing is kept."""

    trains_once = False

    def train_rows(self, stream: Stream, i: int, previous: Path | None) -> pa.Table:
        return stream.experiences[i].pool

    def after(self, stream: Stream, i: int, model_dir: Path, previous: Path | None) -> None:
        pass


@dataclass(frozen=True)
class StrategyEntry:
    build: Callable[[Any, JobSpec], Strategy]
    params: type[Section]
    doc: str


STRATEGIES: Registry[StrategyEntry] = Registry("continual strategy")


def register_strategy(name: str, params: type[Section]):
    def add(build: Callable[[Any, JobSpec], Strategy]) -> Callable[[Any, JobSpec], Strategy]:
        doc = (build.__doc__ or "").strip().splitlines()[0] if build.__doc__ else ""
        STRATEGIES.register(name)(StrategyEntry(build, params, doc))
        return build

    return add


def param_errors(raw: Any) -> list[tuple[tuple, str, Any]]:
    """(location, message, input) of every problem in a raw `continual:` section."""
    return registry_param_errors(STRATEGIES, "continual", "strategy", "naive", raw)


def build_strategy(spec: JobSpec) -> Strategy:
    c = spec.continual
    entry = STRATEGIES.get(c.strategy, "continual.strategy")
    return entry.build(entry.params.model_validate(c.params), spec)


def previous_extras(spec: JobSpec) -> dict[str, torch.Tensor]:
    """The tensors the model this run starts from left behind ({} when it left none)."""
    if spec.finetune is None:
        return {}
    path = Path(spec.finetune.from_).expanduser() / EXTRAS
    if not path.is_file():
        return {}
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (truncated, or a pickle with code)
        raise DataError(f"{path}: not a tensor file written by raydl ({type(e).__name__}); train the previous experience again") from None


class NaiveParams(Section):
    pass


@dataclass(frozen=True)
class Naive(OwnRows):
    """Fine-tune on the new data only (the baseline that forgets)."""

    def penalties(self, model: nn.Module) -> list:
        return []

    def consolidations(self) -> list:
        return []


@register_strategy("naive", NaiveParams)
def _naive(p: NaiveParams, spec: JobSpec) -> Strategy:
    """Fine-tune on the new data only (the baseline that forgets)."""
    return Naive()


from raydl.continual import agem, ewc, lwf, references, replay  # noqa: E402,F401  (registers the built-ins)
