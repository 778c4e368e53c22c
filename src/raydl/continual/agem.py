"""Averaged gradient episodic memory, A-GEM (Chaudhry et al. 2019), as a loss term.

A-GEM keeps an episodic memory of past rows (here the replay buffer, kept with each model as
`replay.py` keeps it, but not mixed into the train rows) and, at every step, compares the gradient
g of the current batch with the reference gradient r of a random memory batch: when g . r < 0
(the step would raise the loss on the memory) it steps along g - (g . r / r . r) r instead.

The loop only adds loss terms, so the projection is written as one: with c = g . r / r . r taken
as a constant, the term -c * r . (theta - stop_grad(theta)) is 0 but adds -c r to the gradient, so
the backward pass the loop runs yields the projected gradient. Both g and r are computed by the
term itself (a forward and backward of the bare model on the batch and on the memory batch) and
averaged across ranks (an all-reduce; every rank draws its own memory batch), so every rank takes
the same decision and the step is A-GEM's on the global batch, which DDP's averaged gradient is.
Costs: two more forward/backward passes a step; with batch norm, the two extra forwards (train
mode) also move its running statistics, the memory batch's included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import nn

from raydl.batches import to_device
from raydl.continual import OwnRows, register_strategy
from raydl.continual.replay import Replay, ReplayParams, check_size, read_buffer
from raydl.errors import SpecError
from raydl.spec import JobSpec


class AGEMParams(ReplayParams):
    batch_size: int = Field(256, ge=1, description="memory rows per reference gradient, on each rank")


def _flat(grads: tuple, params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def projection(g: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """A-GEM's coefficient c (the step is g - c r): g . r / r . r when g . r < 0, else 0."""
    dot = g @ r
    return torch.where(dot < 0, dot / (r @ r).clamp_min(1e-12), torch.zeros_like(dot))


@dataclass
class Project:
    """The loss term whose gradient turns the batch's gradient into A-GEM's projected one."""

    previous: str  # the previous model directory (its replay buffer is the memory)
    batch_size: int
    seed: int
    _memory: Any = field(default=None, repr=False)  # (model-ready columns, task, kind), loaded once
    _step: int = 0
    projected: int = 0  # steps projected so far (for tests and curiosity)

    def _load(self, device: torch.device) -> tuple:
        from raydl.inference import encode_labels, model_inputs
        from raydl.model_dir import load_model

        prev = load_model(self.previous)
        table, _ = read_buffer(Path(self.previous))
        if table is None:
            raise SpecError(f"{self.previous}: no replay buffer to take A-GEM's memory from; train the previous experience "
                            "with continual.strategy: agem (or replay)")
        cols = {**model_inputs(prev, table), "y": encode_labels(prev, table)}
        return {k: torch.as_tensor(v).to(device) for k, v in cols.items()}, prev.task, prev.kind

    def __call__(self, model: nn.Module, batch: Any, out: torch.Tensor) -> torch.Tensor:
        if self._memory is None:
            self._memory = self._load(out.device)
        cols, task, kind = self._memory
        rank, world = _rank_world()
        params = [p for p in model.parameters() if p.requires_grad]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + rank * 10_007 + self._step)
        self._step += 1
        idx = torch.randperm(len(cols["y"]), generator=gen)[: self.batch_size].to(out.device)
        memory = to_device(kind.collate({k: v[idx] for k, v in cols.items()}), out.device)
        r = _flat(torch.autograd.grad(task.loss(model(memory), memory), params, allow_unused=True), params)
        g = _flat(torch.autograd.grad(task.loss(model(batch), batch), params, allow_unused=True), params)
        both = torch.cat([g, r]).float()
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(both)
            both /= world
        g, r = both[: len(g)], both[len(g) :]
        c = projection(g, r)
        if float(c) == 0.0:
            return out.new_zeros(())
        self.projected += 1
        theta = torch.cat([p.reshape(-1) for p in params])
        return -c * ((theta - theta.detach()) @ r.to(theta.dtype))


@dataclass(frozen=True)
class AGEM(OwnRows):
    params: AGEMParams
    spec: JobSpec

    def penalties(self, model: nn.Module) -> list:
        if self.spec.finetune is None:  # the first experience: no memory yet
            return []
        return [Project(self.spec.finetune.from_, self.params.batch_size, self.spec.training.seed)]

    def consolidations(self) -> list:
        return []

    def train_rows(self, stream, i: int, previous: Path | None):
        check_size(self.params.size, stream.experiences[i].pool.num_columns)
        return stream.experiences[i].pool

    def after(self, stream, i: int, model_dir: Path, previous: Path | None) -> None:
        """The memory after this experience: replay's buffer, kept the same way."""
        Replay(self.params, self.spec.training.seed).after(stream, i, model_dir, previous)


@register_strategy("agem", AGEMParams)
def _agem(p: AGEMParams, spec: JobSpec) -> AGEM:
    """A-GEM: project each step's gradient so the loss on an episodic memory of past rows does not rise."""
    if spec.data.standardize != "none":
        raise SpecError("data.standardize: A-GEM's memory rows are preprocessed as the previous model's were; "
                        "set data.standardize: none so every experience's model sees the same scale")
    return AGEM(p, spec)
