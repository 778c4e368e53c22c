"""Starting from a trained model directory: load its weights, freeze layers, scale learning rates.

The spec's `finetune:` section names a raydl model directory and fnmatch patterns over parameter
names (`raydl models` builds the model; `model.named_parameters()` names them, e.g. `0.weight`):
`freeze` keeps matching parameters fixed, `lr_mult` scales their learning rate (a lower rate for a
pretrained backbone), `reinit` leaves matching parameters as initialised (a new head whose shape
differs). Every other parameter and buffer must exist in the source with the same shape.

`check` runs on the driver before Ray starts (one line per kind of problem); `apply` and
`param_groups` run in every worker, on the model the loop has just built.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

import torch
from torch import nn

from raydl.errors import DataError, SpecError
from raydl.spec import FinetuneSpec

WEIGHTS = "weights.pt"


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def source_weights(ft: FinetuneSpec) -> dict[str, torch.Tensor]:
    """The source directory's weights (tensors only; a pickle with code is refused); an s3://
    directory is downloaded and checked against its `_COMPLETE` marker first."""
    from raydl import storage

    if storage.is_uri(ft.from_):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="raydl-finetune-") as tmp:
            local = storage.open_dir(ft.from_, Path(tmp))
            return source_weights(ft.model_copy(update={"from_": str(local)}))
    path = Path(ft.from_).expanduser()
    if not (path / WEIGHTS).is_file():
        why = "does not exist" if not path.exists() else f"is not a raydl model directory (no {WEIGHTS})"
        raise DataError(f"finetune.from: {str(path)!r} {why}; give the model/ directory of a finished raydl train run")
    try:
        return torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, random bytes, a pickle with code
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise DataError(f"finetune.from: {path / WEIGHTS} is not a tensor state_dict written by raydl train ({why})") from None


def check(model: nn.Module, ft: FinetuneSpec) -> None:
    """Every pattern matches a parameter, and every loaded tensor matches the model in name and shape
    (`model` may live on the meta device: only names and shapes are read)."""
    names = [n for n, _ in model.named_parameters()]
    unmatched = [f"finetune.{where}: pattern {p!r} matches no parameter"
                 for where, pats in (("freeze", ft.freeze), ("lr_mult", list(ft.lr_mult)), ("reinit", ft.reinit))
                 for p in pats if not any(fnmatchcase(n, p) for n in names)]
    if unmatched:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise SpecError("; ".join(unmatched) + f" (the model's parameters: {shown})")
    bad = _mismatches(model.state_dict(), source_weights(ft), ft.reinit)
    if bad:
        raise DataError(f"finetune.from: the layers of {ft.from_} do not match this model: {'; '.join(bad[:6])}"
                        + (f"; and {len(bad) - 6} more" if len(bad) > 6 else "")
                        + "; list the differing layers in finetune.reinit, or use the same model parameters")


def _mismatches(target: dict, source: dict, reinit: list[str]) -> list[str]:
    out = []
    for name, t in target.items():
        if _matches(name, reinit):
            continue
        s = source.get(name)
        if s is None:
            out.append(f"{name} is not in the source")
        elif tuple(s.shape) != tuple(t.shape):
            out.append(f"{name} has shape {tuple(s.shape)} in the source, {tuple(t.shape)} here")
    return out


def apply(model: nn.Module, ft: FinetuneSpec) -> None:
    """Load the source weights (all but `reinit`) into `model` and freeze the `freeze` parameters."""
    source = source_weights(ft)
    state = model.state_dict()
    bad = _mismatches(state, source, ft.reinit)
    if bad:  # checked on the driver; a directory changed since is still refused
        raise DataError(f"finetune.from: the layers of {ft.from_} do not match this model: {'; '.join(bad[:6])}")
    model.load_state_dict({n: (t if _matches(n, ft.reinit) else source[n]) for n, t in state.items()})
    for name, p in model.named_parameters():
        if _matches(name, ft.freeze):
            p.requires_grad_(False)


def param_groups(model: nn.Module, lr: float, lr_mult: dict[str, float]) -> list[dict]:
    """The trainable parameters in optimizer groups: one per learning-rate multiplier (the first
    matching pattern wins), plus the rest at the base rate."""
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mult = next((m for pat, m in lr_mult.items() if fnmatchcase(name, pat)), 1.0)
        groups.setdefault(mult, []).append(p)
    return [{"params": ps, "lr": lr * m} for m, ps in groups.items()]
