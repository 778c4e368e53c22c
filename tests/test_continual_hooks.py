"""The loop's hooks for continual learning: strategies chosen by name with typed parameters,
penalties built from the model a run starts from, and consolidations (EWC's Fisher) computed
distributed when training ends and kept with the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raydl.continual import EXTRAS, STRATEGIES
from raydl.continual.ewc import COUNT, PREFIX, Anchor, Fisher
from raydl.errors import SpecError
from raydl.launch import train
from raydl.spec import JobSpec, spec_from_dict


class Task:  # what Fisher needs of a task: its loss
    @staticmethod
    def loss(out, batch):
        return nn.functional.cross_entropy(out, batch["y"])


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, batch):
        return self.fc(batch["x"])


def test_fisher_is_the_mean_squared_per_sample_gradient_plus_the_decayed_previous():
    torch.manual_seed(0)
    model = Linear()
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    manual = torch.zeros_like(model.fc.weight)
    for j in range(5):
        model.zero_grad()
        nn.functional.cross_entropy(model.fc(x[j : j + 1]), y[j : j + 1]).backward()
        manual += model.fc.weight.grad ** 2
    previous = {PREFIX + "fc.weight": torch.ones(2, 3)}
    f = Fisher(samples=4, decay=0.5, previous=previous)
    sums = f(model, iter([{"x": x[:3], "y": y[:3]}, {"x": x[3:], "y": y[3:]}]), Task)
    assert float(sums[COUNT]) == 4  # capped at `samples`
    all5 = Fisher(samples=100, decay=0.5, previous=previous)
    sums = all5(model, iter([{"x": x, "y": y}]), Task)
    torch.testing.assert_close(sums[PREFIX + "fc.weight"], manual)
    done = all5.finish(dict(sums))
    torch.testing.assert_close(done[PREFIX + "fc.weight"], manual / 5 + 0.5)
    assert COUNT not in done


def test_the_anchor_is_zero_at_the_previous_weights_and_grows_away_from_them():
    model = Linear()
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    fisher = {n: torch.full_like(p, 2.0) for n, p in model.named_parameters()}
    penalty = Anchor(weight=10.0, fisher=fisher, anchor=anchor)
    out = torch.zeros(1)
    assert float(penalty(model, None, out)) == 0.0
    with torch.no_grad():
        model.fc.bias += 1.0
    assert float(penalty(model, None, out)) == pytest.approx(0.5 * 10.0 * 2.0 * 2)  # 2 biases moved by 1


def test_strategies_and_their_parameters_are_checked_with_the_spec():
    assert {"naive", "ewc"} <= set(STRATEGIES.names())
    with pytest.raises(SpecError, match=r"continual.strategy: unknown continual strategy 'rehearse'; valid: .*ewc"):
        spec_from_dict({"data": {"source": "digits"}, "continual": {"strategy": "rehearse"}})
    with pytest.raises(SpecError, match=r"continual.weight: Input should be greater than 0.*continual.lamda: unknown parameter of continual strategy ewc"):
        spec_from_dict({"data": {"source": "digits"}, "continual": {"strategy": "ewc", "weight": -1, "lamda": 3}})


def _spec(storage: str, name: str, classes: str, start: str | None) -> JobSpec:
    raw = {
        "run": {"name": name, "storage_path": storage},
        "data": {"source": "digits", "classes": list(range(10))},
        "model": {"name": "mlp", "hidden": [32]},
        "training": {"epochs": 2, "batch_size": 64},
        "continual": {"strategy": "ewc", "weight": 50.0, "fisher_samples": 200},
        "tracking": "none",
    }
    if start:
        raw["finetune"] = {"from": start}
    return JobSpec.model_validate(raw)


@pytest.mark.slow
def test_ewc_keeps_a_fisher_with_the_model_and_the_next_run_is_anchored_to_it(ray_local, tmp_path):
    storage = str(tmp_path / "runs")
    first = train(_spec(storage, "exp1", "0-9", None))
    extras = torch.load(first.model_dir / EXTRAS, weights_only=True)
    weights = torch.load(first.model_dir / "weights.pt", weights_only=True)
    assert {PREFIX + n for n in weights if n.endswith(("weight", "bias"))} == set(extras)
    assert all(torch.isfinite(v).all() and (v >= 0).all() for v in extras.values())
    assert sum(float(v.sum()) for v in extras.values()) > 0
    second = train(_spec(storage, "exp2", "0-9", str(first.model_dir)))
    assert second.metrics["epochs_run"] == 2
    later = torch.load(second.model_dir / EXTRAS, weights_only=True)
    # plain EWC (decay 1): the Fishers add up, so each entry is at least the first experience's
    assert all(bool((later[k] >= extras[k] - 1e-6).all()) for k in extras)
