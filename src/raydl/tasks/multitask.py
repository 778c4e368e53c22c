"""Multi-task learning: one model output split into several heads, each with its own loss and metrics.

The data names its heads in its parameters (`heads`: [{name, type: classification | regression,
classes}], e.g. `digits_multitask`); `y` holds one column per head (class ids, or a regression
target). The model returns the heads' outputs side by side, `[B, sum of head sizes]` (a
classification head one logit per class, a regression head one value), in the heads' order; the
`multitask_cnn` model has a shared backbone and one small head per task.

The loss is the sum of each head's loss (cross-entropy, or MSE) times its weight in
`loss.task_weights` (1 when not named). Metrics per head: `<head>_loss`, and `<head>_accuracy`
for a classification head or `<head>_mae` and `<head>_r2` for a regression head, all from
additive statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raydl.errors import DataError, SpecError
from raydl.spec import LossSpec
from raydl.tasks import TASKS, Task


@dataclass(frozen=True)
class Head:
    name: str
    type: str  # "classification" | "regression"
    classes: list
    mean: float = 0.0  # a regression head's scale: the model predicts (target - mean) / std
    std: float = 1.0

    @property
    def size(self) -> int:
        return len(self.classes) if self.type == "classification" else 1

    @property
    def stats_size(self) -> int:
        return 2 if self.type == "classification" else 5  # [loss_sum, correct] | [loss_sum, sae, sse, sum_y, sum_y2]


@dataclass(frozen=True)
class MultiTask:
    heads: tuple[Head, ...]
    weights: tuple[float, ...]
    name: str = "multitask"

    def n_outputs(self) -> int:
        return sum(h.size for h in self.heads)

    def head_sizes(self) -> list[int]:
        return [h.size for h in self.heads]

    def check_output(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 2 or shape[1] != self.n_outputs():
            raise DataError(f"model: a multitask task needs [batch, {self.n_outputs()}] outputs (heads "
                            f"{', '.join(f'{h.name}: {h.size}' for h in self.heads)}), got shape {list(shape)}")

    def _parts(self, out: torch.Tensor, batch: Mapping[str, Any]):
        y = batch["y"]
        for i, (head, z) in enumerate(zip(self.heads, torch.split(out.float(), self.head_sizes(), dim=1))):
            target = y[:, i]
            if head.type == "classification":
                yield head, z, target.long(), F.cross_entropy(z, target.long())
            else:
                yield head, z.reshape(-1) * head.std + head.mean, target.float(), F.mse_loss(
                    z.reshape(-1), (target.float() - head.mean) / head.std)

    def head_losses(self, out: torch.Tensor, batch: Mapping[str, Any]) -> list[torch.Tensor]:
        return [loss for _, _, _, loss in self._parts(out, batch)]

    def loss(self, out: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return sum(w * loss for w, loss in zip(self.weights, self.head_losses(out, batch)))

    def stats_size(self) -> int:
        return 2 + sum(h.stats_size for h in self.heads)

    def stats(self, out: torch.Tensor, batch: Mapping[str, Any]) -> np.ndarray:
        n = len(batch["y"])
        s, total = [0.0, float(n)], 0.0
        for (head, z, target, loss), w in zip(self._parts(out, batch), self.weights):
            total += w * loss.item()
            if head.type == "classification":
                s += [loss.item() * n, float((z.argmax(1) == target).sum())]
            else:
                t = target.double()
                err = z.double() - t
                s += [loss.item() * n, float(err.abs().sum()), float((err**2).sum()), float(t.sum()), float((t**2).sum())]
        s[0] = total * n
        return np.array(s)

    def summarize(self, s: np.ndarray, prefix: str) -> dict[str, float]:
        n = max(s[1], 1.0)
        m, i = {"loss": s[0] / n}, 2
        for head in self.heads:
            part = s[i : i + head.stats_size]
            m[f"{head.name}_loss"] = part[0] / n
            if head.type == "classification":
                m[f"{head.name}_accuracy"] = part[1] / n
            else:
                sst = part[4] - part[3] ** 2 / n
                m[f"{head.name}_mae"] = part[1] / n
                m[f"{head.name}_r2"] = 1.0 - part[2] / sst if sst > 0 else 0.0
            i += head.stats_size
        return {f"{prefix}_{k}": float(v) for k, v in m.items()}

    def metric_names(self) -> list[str]:
        names = ["loss"]
        for h in self.heads:
            names += [f"{h.name}_loss"] + ([f"{h.name}_accuracy"] if h.type == "classification" else [f"{h.name}_mae", f"{h.name}_r2"])
        return names

    def encode_labels(self, values: np.ndarray, where: str) -> np.ndarray:
        y = np.asarray(values, dtype=np.float32)
        if y.ndim != 2 or y.shape[1] != len(self.heads):
            raise DataError(f"{where}: a multitask target has one column per head ({', '.join(h.name for h in self.heads)})")
        return y

    def prediction_columns(self, out: torch.Tensor) -> dict[str, Any]:
        cols: dict[str, Any] = {}
        for head, z in zip(self.heads, torch.split(out.float(), self.head_sizes(), dim=1)):
            if head.type == "classification":
                cols[head.name] = [head.classes[i] for i in z.argmax(1).tolist()]
                cols[f"{head.name}_probability"] = torch.softmax(z, 1).max(1).values.numpy().astype(np.float64)
            else:
                cols[head.name] = (z.reshape(-1) * head.std + head.mean).numpy().astype(np.float64)
        return cols

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "heads": [h.__dict__ for h in self.heads], "weights": list(self.weights)}


@TASKS.register("multitask")
def _multitask(prep: Any, spec: LossSpec) -> Task:
    raw = (prep.kind_params or {}).get("heads")
    if not raw:
        raise DataError("data: a multitask dataset names its heads in its parameters (heads: [{name, type, classes}])")
    if spec.name != "auto":
        raise SpecError(f"loss.name: a multitask task uses each head's own loss (cross-entropy, MSE); "
                        f"set loss.name: auto and weigh the heads with loss.task_weights, not {spec.name!r}")
    heads = tuple(Head(h["name"], h["type"], list(h.get("classes") or []), float(h.get("mean", 0.0)), float(h.get("std", 1.0)))
                  for h in raw)
    names = [h.name for h in heads]
    unknown = sorted(set(spec.task_weights) - set(names))
    if unknown:
        raise SpecError(f"loss.task_weights: {unknown} name no head of this data; its heads: {names}")
    bad = {k: w for k, w in spec.task_weights.items() if not w >= 0}
    if bad:
        raise SpecError(f"loss.task_weights: weights must be >= 0, got {bad}")
    return MultiTask(heads, tuple(float(spec.task_weights.get(n, 1.0)) for n in names))
