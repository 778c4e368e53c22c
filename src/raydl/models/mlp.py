"""Multi-layer perceptron: depth and width, activation, dropout, batch/layer norm, Xavier/He init."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from torch import nn

from raydl.batches import DataKind
from raydl.models import OneTensor, in_features, register_model
from raydl.spec import Section

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
MAX_WIDTH = 65_536  # one hidden layer
Init = Literal["default", "xavier", "he"]


def init_weights(model: nn.Module, scheme: str, activation: str) -> None:
    """Xavier (Glorot) or He (Kaiming) initialisation of every Linear/Conv weight; biases to zero."""
    if scheme == "default":
        return
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d):
            if scheme == "xavier":
                nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain(activation))
            else:
                nonlinearity = "leaky_relu" if activation == "leaky_relu" else "relu"
                nn.init.kaiming_normal_(m.weight, nonlinearity=nonlinearity)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MLPParams(Section):
    hidden: list[int] = Field(default_factory=lambda: [128, 64], description="widths of the hidden layers")
    activation: Literal["relu", "leaky_relu", "tanh", "sigmoid"] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1, description="after each hidden activation")
    norm: Literal["none", "batch", "layer"] = "none"
    init: Init = "default"

    @field_validator("hidden")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if any(w < 1 or w > MAX_WIDTH for w in v):
            raise ValueError(f"every hidden width must be at least 1 and at most {MAX_WIDTH}")
        return v


@register_model("mlp", MLPParams)
def mlp(p: MLPParams, kind: DataKind, n_outputs: int) -> nn.Module:
    """Linear layers with an activation (and optional norm and dropout) between them."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features(kind)
    for h in p.hidden:
        layers.append(nn.Linear(width, h))
        if p.norm == "batch":
            layers.append(nn.BatchNorm1d(h))
        elif p.norm == "layer":
            layers.append(nn.LayerNorm(h))
        layers.append(ACTIVATIONS[p.activation]())
        if p.dropout > 0:
            layers.append(nn.Dropout(p.dropout))
        width = h
    layers.append(nn.Linear(width, n_outputs))
    model = OneTensor(*layers)
    init_weights(model, p.init, p.activation)
    return model
