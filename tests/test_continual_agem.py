"""A-GEM as a loss term: the gradient the loop's backward pass yields is A-GEM's projected one
(checked against the projection computed independently, on a real model directory and its buffer),
and its memory is the replay buffer kept with each model. Fast: no Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from raydl.continual import STRATEGIES, build_strategy
from raydl.continual.agem import Project, projection
from raydl.continual.replay import BUFFER, read_buffer, write_buffer
from raydl.continual.stream import LABEL, PIXELS, build_stream
from raydl.errors import SpecError
from raydl.spec import spec_from_dict


def _spec(**data):
    return spec_from_dict({"data": {"source": "digits", "standardize": "none", **data}, "stream": {"scenario": "split_digits"},
                           "continual": {"strategy": "agem", "size": 50, "batch_size": 64}, "model": {"name": "mlp", "hidden": [16]},
                           "tracking": "none"})


def _model_dir(tmp_path: Path, buffer: pa.Table | None):
    """A raydl model directory of an untrained 10-class MLP on the 64 pixels, with `buffer` as its replay buffer."""
    from raydl.batches import build_kind
    from raydl.data import Preprocessing
    from raydl.model_dir import write_model_dir
    from raydl.models import build_model

    spec = _spec()
    prep = Preprocessing(PIXELS, LABEL, "classification", list(range(10)), [0.0] * 64, [1.0] * 64)
    torch.manual_seed(0)
    model = build_model(spec.model, build_kind(prep), 10)
    path = write_model_dir(tmp_path / "model", model.state_dict(), spec, prep, {"final": {}}, {})
    if buffer is not None:
        write_buffer(path, buffer, buffer.num_rows)
    return path


def _rows(x: np.ndarray, label: int) -> pa.Table:
    return pa.table({**{p: x[:, i] for i, p in enumerate(PIXELS)}, LABEL: np.full(len(x), label)})


def test_projection_removes_the_component_against_the_reference_only_when_they_conflict():
    g, r = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    c = projection(g, r)
    torch.testing.assert_close(g - c * r, torch.tensor([0.5, 0.5]))
    assert float((g - c * r) @ r) == pytest.approx(0.0)
    assert float(projection(g, torch.tensor([1.0, 1.0]))) == 0.0


@pytest.mark.parametrize("conflict", [True, False])
def test_the_loss_term_turns_the_backward_pass_into_agems_projected_gradient(tmp_path, conflict):
    from raydl.model_dir import load_model

    x = np.random.default_rng(0).random((40, 64))
    path = _model_dir(tmp_path, _rows(x, 0))  # the memory: these pixels are a 0
    prev = load_model(path)
    model, task = prev.module.train(), prev.task
    params = [p for p in model.parameters() if p.requires_grad]
    memory = {"x": torch.tensor(x, dtype=torch.float32), "y": torch.zeros(40, dtype=torch.long)}

    def grad(b):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(task.loss(model(b), b), params)])

    def batch_of(label: int) -> dict:
        return {"x": torch.tensor(x[:16], dtype=torch.float32), "y": torch.full((16,), label)}

    r = grad(memory)
    # the same pixels labelled 0 agree with the memory; the label (1-9) that pulls hardest against it conflicts
    batch = batch_of(min(range(1, 10), key=lambda k: float(grad(batch_of(k)) @ r)) if conflict else 0)
    g = grad(batch)
    assert (float(g @ r) < 0) == conflict
    term = Project(str(path), batch_size=64, seed=0)  # 64 >= 40 memory rows: the reference is on all of them
    out = model(batch)
    value = term(model, batch, out)
    model.zero_grad()
    (task.loss(out, batch) + value).backward()
    got = torch.cat([p.grad.reshape(-1) for p in params])
    assert float(value.detach()) == 0.0 and term.projected == int(conflict)
    want = g - (g @ r) / (r @ r) * r if conflict else g
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if conflict:
        assert abs(float(got @ r)) < 1e-5 * float(g.norm() * r.norm())  # no longer raises the memory's loss


def test_agem_is_registered_keeps_the_replay_buffer_and_refuses_what_it_cannot_do(tmp_path):
    assert "agem" in STRATEGIES.names()
    spec = _spec()
    stream = build_stream(spec)
    strategy = build_strategy(spec)
    assert strategy.train_rows(stream, 1, None).num_rows == stream.experiences[1].pool.num_rows  # memory not mixed in
    (tmp_path / "m1").mkdir()
    strategy.after(stream, 0, tmp_path / "m1", None)
    buffer, seen = read_buffer(tmp_path / "m1")
    assert buffer.num_rows == 50 and seen == stream.experiences[0].pool.num_rows
    with pytest.raises(SpecError, match=r"^data.standardize: A-GEM's memory rows .* set data.standardize: none"):
        build_strategy(_spec(standardize="feature"))
    path = _model_dir(tmp_path, None)
    assert not (path / BUFFER).exists()
    with pytest.raises(SpecError, match="no replay buffer to take A-GEM's memory from"):
        Project(str(path), 8, 0)(torch.nn.Linear(64, 10), {"x": torch.zeros(2, 64), "y": torch.zeros(2)}, torch.zeros(2, 10))


@pytest.mark.slow
def test_agem_on_the_multihead_task_stream_in_ddp_keeps_the_first_task(ray_local, tmp_path):
    """Two experiences of task-incremental Split-Digits on 2 workers: the multi-head model (the shipped
    config) trained with A-GEM, whose term all-reduces its gradients inside DDP's step."""
    from raydl.continual.run import run_stream
    from raydl.spec import load_spec

    config = Path(__file__).parent.parent / "configs" / "continual_split_digits_tasks.yaml"
    spec = load_spec(config, [f"run.storage_path={tmp_path}", "run.name=tasks", "tracking.backend=none", "training.epochs=10",
                              "continual={strategy: agem}", "continual.size=200", "continual.batch_size=64"])
    result = run_stream(spec, until=2)
    R = result.summary["accuracy_matrix"]
    print(f"agem on split_digits_tasks, 2 experiences: {R}")
    assert result.trained == [1, 2] and (result.root / "runs" / "exp1" / "model" / BUFFER).is_file()
    assert R[1][0] >= 0.9 and R[1][1] >= 0.9  # the new task learnt; the first one's head still right
