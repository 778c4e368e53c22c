"""The model zoo. Adding a model is one `@register_model(name, Params)` on a builder.

Each model declares its own parameters as a pydantic schema (a `Section`): the spec's `model:`
section is `{name, ...those parameters}`, checked against it when the spec is loaded, so a wrong
or unknown parameter is reported with its dotted path and the spec's other problems, before Ray
starts. A builder takes `(params, kind, n_outputs)`: its typed parameters, the data kind (whose
`shape` is one sample's input shape) and the number of outputs the task wants; it returns an
`nn.Module` called as `model(batch)` on a batch of that kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from torch import nn

from raydl.batches import DataKind, model_input
from raydl.registry import Registry
from raydl.registry import param_errors as registry_param_errors
from raydl.spec import ModelSpec, Section


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[[Any, DataKind, int], nn.Module]
    params: type[Section]
    kinds: tuple[str, ...]  # the data kinds it takes
    doc: str


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(name: str, params: type[Section], kinds: tuple[str, ...] = ("tabular", "image")):
    def add(build: Callable[[Any, DataKind, int], nn.Module]) -> Callable[[Any, DataKind, int], nn.Module]:
        doc = (build.__doc__ or "").strip().splitlines()[0] if build.__doc__ else ""
        MODELS.register(name)(ModelEntry(build, params, kinds, doc))
        return build

    return add


class OneTensor(nn.Sequential):
    """A Sequential whose input is the batch's `x` (or a bare tensor): the state-dict keys stay those
    of the plain Sequential."""

    def forward(self, batch: Mapping[str, Any] | Any) -> Any:
        return super().forward(model_input(batch))


def param_errors(model: Any) -> list[tuple[tuple, str, Any]]:
    """(location, message, input) of every problem in a raw `model:` section's parameters."""
    return registry_param_errors(MODELS, "model", "name", "mlp", model)


def model_params(spec: ModelSpec) -> Section:
    """The typed parameters of the model a spec names."""
    return MODELS.get(spec.name, "model.name").params.model_validate(spec.params)


def build_model(spec: ModelSpec, kind: DataKind, n_outputs: int) -> nn.Module:
    entry = MODELS.get(spec.name, "model.name")
    if kind.name not in entry.kinds:
        from raydl.errors import SpecError

        raise SpecError(f"model.name: {spec.name} takes {' or '.join(entry.kinds)} data, not {kind.name} data")
    return entry.build(model_params(spec), kind, n_outputs)


def in_features(kind: DataKind) -> int:
    return math.prod(kind.shape)


def _type_name(t: Any) -> str:
    if get_origin(t) is Literal:
        return " | ".join(repr(a) for a in get_args(t))
    return getattr(t, "__name__", None) if not get_args(t) else str(t).replace("typing.", "")


def describe() -> str:
    """Every registered model, the data it takes, and its parameters with their defaults."""
    lines = []
    for name in MODELS.names():
        entry = MODELS.get(name)
        lines.append(f"{name}  ({', '.join(entry.kinds)} data)  {entry.doc}")
        for field, info in entry.params.model_fields.items():
            default = info.get_default(call_default_factory=True)
            lines.append(f"    {field}: {_type_name(info.annotation)} = {default!r}" + (f"  ({info.description})" if info.description else ""))
    return "\n".join(lines)


from raydl.models import (  # noqa: E402,F401  (registers the built-in models)
    cnn,
    cnn1d,
    detection,
    embedding,
    graph,
    linear,
    mlp,
    mobilenet,
    multihead,
    rnn,
    transformer,
    unet,
)
