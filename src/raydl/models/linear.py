"""Logistic (or linear) regression: one affine layer; the loss makes it logistic."""

from __future__ import annotations

from torch import nn

from raydl.models import MODELS
from raydl.models.mlp import init_weights
from raydl.spec import ModelSpec


@MODELS.register("logistic_regression")
def logistic_regression(spec: ModelSpec, in_features: int, n_outputs: int, image_shape=None) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(in_features, n_outputs))
    init_weights(model, spec.init, "sigmoid")
    return model


MODELS.register("linear")(logistic_regression)
