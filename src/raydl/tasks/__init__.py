"""Tasks: what a model's output means, how it is trained and how it is scored.

A task owns its loss, its additive metric statistics (plain float64 vectors, so per-rank parts are
summed with one all-reduce), the metrics read off those statistics, and its predictions. The loop,
inference and the driver ask the task; nothing else decides "which task is this".

A batch is a mapping of named tensors (see `raydl.batches`); a task reads its target from
`batch["y"]`. Adding a task is one `@TASKS.register(name)` on a builder `(prep, LossSpec) -> Task`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from raydl.calibration import metrics as calibration
from raydl.errors import DataError, SpecError
from raydl.losses import LOSSES, Loss
from raydl.registry import Registry
from raydl.spec import LossSpec


class Task(Protocol):
    name: str

    def n_outputs(self) -> int: ...
    def loss(self, out: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor: ...
    def stats_size(self) -> int: ...
    def stats(self, out: torch.Tensor, batch: Mapping[str, Any]) -> np.ndarray: ...
    def summarize(self, s: np.ndarray, prefix: str) -> dict[str, float]: ...
    def metric_names(self) -> list[str]: ...
    def encode_labels(self, values: np.ndarray, where: str) -> np.ndarray: ...
    def prediction_columns(self, out: torch.Tensor) -> dict[str, Any]: ...
    def describe(self) -> dict[str, Any]: ...


TASKS: Registry[Callable[[Any, LossSpec], Task]] = Registry("task")


def _loss(spec: LossSpec, task: str, default: str) -> Loss:
    name = spec.name if spec.name != "auto" else default
    loss = LOSSES.get(name, "loss.name")(spec)
    if loss.task != task:
        raise SpecError(f"loss.name: {name!r} is a {loss.task} loss but the data is a {task} task")
    return loss


def _value(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


CALIBRATION_METRICS = ("ece", "mce", "brier", "nll")  # equal-width bins: see raydl.calibration.metrics


@dataclass(frozen=True)
class Classification:
    """Class ids in `y`; one logit per class (or one logit and a sigmoid for a binary loss)."""

    classes: list
    loss_: Loss
    name: str = "classification"

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def n_outputs(self) -> int:
        return 1 if self.loss_.binary else self.n_classes

    def loss(self, out: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.loss_.fn(out.float(), batch["y"])

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """[B, C] logits; a binary model's single logit z becomes [0, z] (same softmax as sigmoid)."""
        out = out.float()
        return torch.cat([torch.zeros_like(out), out], dim=1) if self.loss_.binary else out

    def stats_size(self) -> int:
        # [loss_sum, count] + confusion matrix (true x predicted) + calibration bins, NLL, Brier
        return 2 + self.n_classes**2 + calibration.stats_size()

    def stats(self, out: torch.Tensor, batch: Mapping[str, Any]) -> np.ndarray:
        y = batch["y"]
        s = np.zeros(self.stats_size())
        s[0], s[1] = self.loss(out, batch).item() * len(y), len(y)
        log_probs = torch.log_softmax(self.logits(out), dim=1).double().cpu().numpy()
        pred = log_probs.argmax(axis=1)
        k = self.n_classes
        y_np = y.cpu().numpy().astype(np.int64)
        s[2:2 + k * k] = np.bincount(y_np * k + pred, minlength=k * k)
        s[2 + k * k:] = calibration.calibration_stats(log_probs, y_np)
        return s

    def summarize(self, s: np.ndarray, prefix: str) -> dict[str, float]:
        n, k = max(s[1], 1.0), self.n_classes
        cm = s[2:2 + k * k].reshape(k, k)
        tp = np.diag(cm)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
            recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        present = cm.sum(1) > 0  # macro average over the classes present in this split
        m = {"loss": s[0] / n, "accuracy": tp.sum() / n, "precision": precision[present].mean(),
             "recall": recall[present].mean(), "f1": f1[present].mean()}
        cal = calibration.summarize(s[2 + k * k:])
        m.update({name: cal[name] for name in CALIBRATION_METRICS})
        return {f"{prefix}_{k}": float(v) for k, v in m.items()}

    def metric_names(self) -> list[str]:
        return ["loss", "accuracy", "precision", "recall", "f1", *CALIBRATION_METRICS]

    def encode_labels(self, values: np.ndarray, where: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        vals = [_value(v) for v in values]
        unknown = sorted({v for v in vals if v not in index}, key=str)
        if unknown:
            raise DataError(f"{where}: label values {unknown[:5]} were not seen in training; known classes: {self.classes}")
        return np.array([index[v] for v in vals], dtype=np.int64)

    def prediction_columns(self, out: torch.Tensor) -> dict[str, Any]:
        probs = torch.softmax(self.logits(out), dim=1).numpy()
        cols: dict[str, Any] = {"prediction": [self.classes[i] for i in probs.argmax(1)]}
        for i, c in enumerate(self.classes):
            cols[f"prob_{c}"] = probs[:, i]
        return cols


@dataclass(frozen=True)
class Regression:
    """A standardised target in `y`; one output. Metrics are reported in the label's units."""

    loss_: Loss
    target_mean: float = 0.0
    target_std: float = 1.0
    name: str = "regression"

    def n_outputs(self) -> int:
        return 1

    def loss(self, out: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.loss_.fn(out.float(), batch["y"])

    def stats_size(self) -> int:
        return 6  # [loss_sum, count, sse, sae, sum_y, sum_y2], on standardised targets

    def stats(self, out: torch.Tensor, batch: Mapping[str, Any]) -> np.ndarray:
        y = batch["y"].cpu().numpy().astype(np.float64)
        err = out.float().reshape(-1).cpu().numpy().astype(np.float64) - y
        return np.array([self.loss(out, batch).item() * len(y), len(y), np.sum(err**2), np.sum(np.abs(err)),
                         np.sum(y), np.sum(y**2)])

    def summarize(self, s: np.ndarray, prefix: str) -> dict[str, float]:
        n = max(s[1], 1.0)
        sse, sae, sy, sy2 = s[2:]
        sst = sy2 - sy * sy / n
        m = {"loss": s[0] / n, "mse": sse / n * self.target_std**2, "mae": sae / n * self.target_std,
             "r2": 1.0 - sse / sst if sst > 0 else 0.0}
        return {f"{prefix}_{k}": float(v) for k, v in m.items()}

    def metric_names(self) -> list[str]:
        return ["loss", "mse", "mae", "r2"]

    def encode_labels(self, values: np.ndarray, where: str) -> np.ndarray:
        y = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(y)):
            raise DataError(f"{where}: the regression label has NaN or infinite values")
        return ((y - self.target_mean) / self.target_std).astype(np.float32)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, dtype=np.float64) * self.target_std + self.target_mean

    def prediction_columns(self, out: torch.Tensor) -> dict[str, Any]:
        return {"prediction": self.decode(out.float().reshape(-1).numpy())}


@TASKS.register("classification")
def _classification(prep: Any, spec: LossSpec) -> Task:
    loss = _loss(spec, "classification", "cross_entropy")
    if loss.binary and len(prep.classes) != 2:
        raise SpecError(f"loss.name: {loss.name} is binary but the label has {len(prep.classes)} classes; use cross_entropy")
    return Classification(list(prep.classes), loss)


@TASKS.register("regression")
def _regression(prep: Any, spec: LossSpec) -> Task:
    return Regression(_loss(spec, "regression", "mse"), prep.target_mean, prep.target_std)


def build_task(prep: Any, spec: LossSpec) -> Task:
    """The task of prepared data (`prep.task`), with the loss the spec names."""
    return TASKS.get(prep.task, "data.task")(prep, spec)


def run_metrics(task: Task) -> list[str]:
    """Every metric a run of `task` reports (what checkpoint/early-stopping/tune may name)."""
    return ["train_loss", *(f"val_{m}" for m in task.metric_names())]


# Tasks beyond classification and regression live in modules of this package and register
# themselves when imported here (one line each).
from raydl.tasks import detection, embedding, language_model, multitask, segmentation  # noqa: E402,F401  (vision tasks, next-token prediction, metric learning, several heads)
