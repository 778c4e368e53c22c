"""Logistic (or linear) regression: one affine layer; the loss makes it logistic."""

from __future__ import annotations

from torch import nn

from raydl.batches import DataKind
from raydl.models import OneTensor, in_features, register_model
from raydl.models.mlp import Init, init_weights
from raydl.spec import Section


class LinearParams(Section):
    init: Init = "default"


@register_model("logistic_regression", LinearParams)
def logistic_regression(p: LinearParams, kind: DataKind, n_outputs: int) -> nn.Module:
    """One affine layer: logistic regression with a classification loss, linear with a regression one."""
    model = OneTensor(nn.Flatten(), nn.Linear(in_features(kind), n_outputs))
    init_weights(model, p.init, "sigmoid")
    return model


register_model("linear", LinearParams)(logistic_regression)
