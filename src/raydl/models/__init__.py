"""The model zoo. Adding a model is one `@MODELS.register(name)` on a builder.

A builder takes `(spec: ModelSpec, in_features: int, n_outputs: int, image_shape)` and returns an
`nn.Module` mapping a float batch `[B, in_features]` to `[B, n_outputs]`.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

from raydl.registry import Registry
from raydl.spec import ModelSpec


class ModelBuilder(Protocol):
    def __call__(self, spec: ModelSpec, in_features: int, n_outputs: int, image_shape: list[int] | None) -> nn.Module: ...


MODELS: Registry[ModelBuilder] = Registry("model")


def build_model(spec: ModelSpec, in_features: int, n_outputs: int, image_shape: list[int] | None = None) -> nn.Module:
    return MODELS.get(spec.name, "model.name")(spec, in_features, n_outputs, image_shape)


from raydl.models import linear, mlp  # noqa: E402,F401  (registers the built-in models)
