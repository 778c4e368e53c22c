"""Multi-layer perceptron: depth and width, activation, dropout, batch/layer norm, Xavier/He init."""

from __future__ import annotations

from torch import nn

from raydl.models import MODELS
from raydl.spec import ModelSpec

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
_GAIN_NAME = {"relu": "relu", "leaky_relu": "leaky_relu", "tanh": "tanh", "sigmoid": "sigmoid"}


def init_weights(model: nn.Module, scheme: str, activation: str) -> None:
    """Xavier (Glorot) or He (Kaiming) initialisation of every Linear/Conv weight; biases to zero."""
    if scheme == "default":
        return
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d):
            if scheme == "xavier":
                nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain(_GAIN_NAME[activation]))
            else:
                nonlinearity = "leaky_relu" if activation == "leaky_relu" else "relu"
                nn.init.kaiming_normal_(m.weight, nonlinearity=nonlinearity)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@MODELS.register("mlp")
def mlp(spec: ModelSpec, in_features: int, n_outputs: int, image_shape=None) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in spec.hidden:
        layers.append(nn.Linear(width, h))
        if spec.norm == "batch":
            layers.append(nn.BatchNorm1d(h))
        elif spec.norm == "layer":
            layers.append(nn.LayerNorm(h))
        layers.append(ACTIVATIONS[spec.activation]())
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        width = h
    layers.append(nn.Linear(width, n_outputs))
    model = nn.Sequential(*layers)
    init_weights(model, spec.init, spec.activation)
    return model
