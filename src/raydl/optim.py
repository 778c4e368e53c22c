"""Optimizers and learning-rate schedules (per-epoch warmup, step, cosine)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from raydl.registry import Registry
from raydl.spec import OptimizerSpec

OPTIMIZERS: Registry[Callable[[list, OptimizerSpec], torch.optim.Optimizer]] = Registry("optimizer")

OPTIMIZERS.register("sgd")(lambda p, s: torch.optim.SGD(p, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay))
OPTIMIZERS.register("momentum")(lambda p, s: torch.optim.SGD(p, lr=s.lr, momentum=s.momentum or 0.9, weight_decay=s.weight_decay))
OPTIMIZERS.register("nesterov")(lambda p, s: torch.optim.SGD(p, lr=s.lr, momentum=s.momentum or 0.9, nesterov=True, weight_decay=s.weight_decay))
OPTIMIZERS.register("rmsprop")(lambda p, s: torch.optim.RMSprop(p, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay))
OPTIMIZERS.register("adam")(lambda p, s: torch.optim.Adam(p, lr=s.lr, weight_decay=s.weight_decay))
OPTIMIZERS.register("adamw")(lambda p, s: torch.optim.AdamW(p, lr=s.lr, weight_decay=s.weight_decay or 0.01))


def build_optimizer(params, spec: OptimizerSpec) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(spec.name, "optimizer.name")(list(params), spec)


def lr_factor(spec: OptimizerSpec, epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate for `epoch` (0-based): linear warmup, then the schedule."""
    s = spec.schedule
    if epoch < s.warmup_epochs:
        return (epoch + 1) / (s.warmup_epochs + 1)
    t = epoch - s.warmup_epochs
    if s.name == "step":
        return s.gamma ** (t // s.step_size)
    if s.name == "cosine":
        span = max(1, epochs - s.warmup_epochs)
        floor = s.min_lr / spec.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, span) / span))
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, spec: OptimizerSpec, epochs: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(spec, e, epochs))
