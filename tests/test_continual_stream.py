"""Experience streams, the replay buffer, LwF's distillation, the multi-head model and the
continual metrics: the parts of `raydl continual` that run without Ray (fast)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from raydl.continual import STRATEGIES, build_strategy
from raydl.continual.lwf import SEEN, Distill, SeenClasses, distillation
from raydl.continual.metrics import backward_transfer, forgetting, summary
from raydl.continual.replay import (
    BUFFER,
    ReplayParams,
    check_size,
    class_balanced,
    read_buffer,
    reservoir,
    write_buffer,
)
from raydl.continual.stream import LABEL, PIXELS, TASK, build_stream, class_groups
from raydl.errors import DataError, SpecError
from raydl.models import build_model
from raydl.spec import ModelSpec, spec_from_dict

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("continual_*.yaml"))


def _spec(scenario: str = "split_digits", **extra):
    raw = {"data": {"source": "digits", "standardize": "none"}, "stream": {"scenario": scenario}, "tracking": "none"}
    for k, v in extra.items():
        raw[k] = v
    return spec_from_dict(raw)


def _digits_rows() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data / 16.0, d.target


def test_split_digits_is_five_disjoint_pairs_of_classes_with_held_out_test_sets():
    s = build_stream(_spec())
    assert len(s) == 5 and s.classes == list(range(10)) and s.features == PIXELS
    seen = []
    for i, e in enumerate(s.experiences):
        labels = set(e.pool.column(LABEL).to_pylist()) | set(e.test.column(LABEL).to_pylist())
        assert labels == {2 * i, 2 * i + 1}
        seen += sorted(labels)
        assert 0.1 < e.test.num_rows / (e.test.num_rows + e.pool.num_rows) < 0.3  # data.split.test = 0.2
        pool = {tuple(r) for r in np.stack([e.pool.column(c).to_numpy() for c in PIXELS], 1).round(6)}
        test = {tuple(r) for r in np.stack([e.test.column(c).to_numpy() for c in PIXELS], 1).round(6)}
        assert not pool & test
    assert seen == list(range(10))
    assert sum(e.pool.num_rows + e.test.num_rows for e in s.experiences) == 1797
    assert class_groups(5, 3) != class_groups(5, 0) and sorted(sum(class_groups(5, 3), [])) == list(range(10))
    with pytest.raises(SpecError, match="stream.experiences: 3 does not divide the 10 digit classes"):
        build_stream(_spec(stream={"scenario": "split_digits", "experiences": 3}))


def test_task_incremental_split_digits_carries_the_task_id_and_needs_unscaled_input():
    s = build_stream(_spec("split_digits_tasks"))
    assert s.features == [*PIXELS, TASK]
    for i, e in enumerate(s.experiences):
        assert set(e.pool.column(TASK).to_pylist()) == {float(i)}
    from raydl.continual.run import run_stream

    with pytest.raises(SpecError, match="data.standardize: a task-incremental stream"):
        run_stream(spec_from_dict({"data": {"source": "digits"}, "stream": {"scenario": "split_digits_tasks"}}))


def test_permuted_and_rotated_digits_transform_the_same_images_with_a_fixed_seed():
    X, y = _digits_rows()
    p = build_stream(_spec("permuted_digits"))
    again = build_stream(_spec("permuted_digits"))
    other = build_stream(_spec(stream={"scenario": "permuted_digits", "seed": 1}))
    for a, b in zip(p.experiences, again.experiences):
        assert a.pool.equals(b.pool)
    assert not p.experiences[0].pool.equals(other.experiences[0].pool)
    first = p.experiences[0]
    full = pa.concat_tables([first.pool, first.test])
    Xp = np.stack([full.column(c).to_numpy() for c in PIXELS], 1)
    # every image is some permutation of an original's pixels, and the same permutation for all of them
    assert sorted(np.sort(Xp, 1).sum(1).round(6)) == sorted(np.sort(X, 1).sum(1).round(6))
    r = build_stream(_spec("rotated_digits"))
    r0 = pa.concat_tables([r.experiences[0].pool, r.experiences[0].test])
    Xr = np.stack([r0.column(c).to_numpy() for c in PIXELS], 1)
    assert sorted(map(tuple, Xr.round(6))) == sorted(map(tuple, X.round(6)))  # the first angle is 0
    r1 = r.experiences[1].pool
    assert not np.allclose(np.stack([r1.column(c).to_numpy() for c in PIXELS[:8]], 1).sum(), 0)


def test_a_stream_whose_experiences_have_other_columns_is_refused_with_one_line(tmp_path):
    a = pa.table({"f1": [0.1, 0.2, 0.3, 0.4] * 5, "f2": [1.0, 2.0, 3.0, 4.0] * 5, "y": [0, 1, 0, 1] * 5})
    b = pa.table({"f1": [0.1, 0.2, 0.3, 0.4] * 5, "f3": [1.0, 2.0, 3.0, 4.0] * 5, "y": [0, 1, 0, 1] * 5})
    pq.write_table(a, tmp_path / "a.parquet")
    pq.write_table(b, tmp_path / "b.parquet")
    spec = {"run": {"storage_path": str(tmp_path / "runs")}, "data": {"source": "stream", "label": "y"},
            "stream": {"scenario": "sources", "sources": [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]}}
    with pytest.raises(DataError, match=r"stream: experience 2 \(.*b.parquet\) has other feature columns than experience 1: "
                                        r"missing \['f2'\]; extra \['f3'\]"):
        build_stream(spec_from_dict(spec))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = subprocess.run([sys.executable, "-m", "raydl.cli", "continual", str(tmp_path / "spec.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "has other feature columns than experience 1" in lines[0], out.stderr
    assert not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.parametrize("override, message", [
    ("continual.strategy=rehearse", "continual.strategy: unknown continual strategy 'rehearse'; valid: agem, cumulative, ewc, joint, lwf, naive, replay"),
    ("continual.size=0", "continual.size: Input should be greater than or equal to 1"),
    ("continual.size=90000000", "continual.size: a replay buffer of 90,000,000 rows x 65 columns needs"),
])
def test_bad_strategies_and_buffers_are_one_line_and_exit_2(tmp_path, override, message):
    spec = {"run": {"storage_path": str(tmp_path / "runs")}, "data": {"source": "digits", "standardize": "none"},
            "continual": {"strategy": "replay"}, "stream": {"scenario": "split_digits"}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = subprocess.run([sys.executable, "-m", "raydl.cli", "continual", str(tmp_path / "spec.yaml"), override],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert not (tmp_path / "runs").exists()


def test_reservoir_keeps_every_row_seen_with_the_same_probability():
    rng = np.random.default_rng(0)
    size, first, second, trials = 50, 120, 80, 3000
    hits = np.zeros(first + second)
    for _ in range(trials):
        buf = np.arange(first)[reservoir(0, 0, first, size, rng)]  # experience 1
        assert len(buf) == size and len(set(buf)) == size
        idx = reservoir(size, first, second, size, rng)  # experience 2: slots index [buffer..., new...]
        rows = np.concatenate([buf, first + np.arange(second)])[idx]
        hits[rows] += 1
    p = hits / trials
    assert np.allclose(p, size / (first + second), atol=0.04)  # 0.25 each, old and new rows alike
    assert abs(p[:first].mean() - p[first:].mean()) < 0.01


def test_class_balanced_shares_the_slots_among_the_classes():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 100 + [1] * 100 + [2] * 10)
    idx = class_balanced(labels, 60, rng)
    counts = np.bincount(labels[idx])
    assert counts.tolist() == [25, 25, 10]  # the small class keeps all 10; the others share the rest
    assert len(set(idx)) == len(idx)
    assert np.bincount(labels[class_balanced(labels, 300, rng)]).tolist() == [100, 100, 10]


def test_the_buffer_is_kept_as_parquet_with_its_count_and_continues(tmp_path):
    s = build_stream(_spec())
    replay = build_strategy(_spec(continual={"strategy": "replay", "size": 100}))
    (tmp_path / "m1").mkdir()
    (tmp_path / "m2").mkdir()
    replay.after(s, 0, tmp_path / "m1", None)
    buf, seen = read_buffer(tmp_path / "m1")
    assert buf.num_rows == 100 and seen == s.experiences[0].pool.num_rows
    assert pq.read_table(tmp_path / "m1" / BUFFER).column_names == s.experiences[0].pool.column_names
    rows = replay.train_rows(s, 1, tmp_path / "m1")
    assert rows.num_rows == s.experiences[1].pool.num_rows + 100
    replay.after(s, 1, tmp_path / "m2", tmp_path / "m1")
    buf2, seen2 = read_buffer(tmp_path / "m2")
    assert seen2 == seen + s.experiences[1].pool.num_rows
    assert set(buf2.column(LABEL).to_pylist()) == {0, 1, 2, 3}
    write_buffer(tmp_path, buf2.slice(0, 3), 7)
    assert read_buffer(tmp_path)[1] == 7
    (tmp_path / "m2" / BUFFER).write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a replay buffer written by raydl"):
        read_buffer(tmp_path / "m2")
    with pytest.raises(SpecError, match=r"at most 8,192 rows"):
        check_size(20_000, 4, memory=2 * 8 * 4 * 8192)
    assert ReplayParams().size == 500


def test_accuracy_matrix_figures_match_their_definitions():
    R = np.array([[0.9, 0.1, 0.0],
                  [0.6, 0.8, 0.2],
                  [0.3, 0.7, 0.95]])
    out = summary(R)
    assert out["average_accuracy"] == pytest.approx((0.3 + 0.7 + 0.95) / 3)
    assert out["average_accuracy_curve"] == pytest.approx([0.9, 0.7, (0.3 + 0.7 + 0.95) / 3])
    assert forgetting(R) == pytest.approx(((0.9 - 0.3) + (0.8 - 0.7)) / 2)  # drop from the best earlier row
    assert backward_transfer(R) == pytest.approx(((0.3 - 0.9) + (0.7 - 0.8)) / 2)
    assert forgetting(R[:1]) is None and backward_transfer(R[:1]) is None
    joint = summary(np.array([[0.9, 0.8, 1.0]]), joint=True)
    assert joint["average_accuracy"] == pytest.approx(0.9) and joint["forgetting"] is None


def test_lwf_distils_the_previous_models_outputs_on_the_seen_classes(tmp_path):
    torch.manual_seed(0)
    new, old = torch.randn(6, 4), torch.randn(6, 4)
    t = 2.0
    p = torch.softmax(old / t, 1)
    manual = t * t * (p * (torch.log(p) - torch.log_softmax(new / t, 1))).sum(1).mean()
    torch.testing.assert_close(distillation(new, old, t), manual)
    assert float(distillation(old, old, t)) == pytest.approx(0.0, abs=1e-6)
    seen = SeenClasses(previous=torch.tensor([0.0, 3.0, 0.0, 0.0], dtype=torch.float64))
    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(2, 4)

        def forward(self, batch):
            return self.fc(batch["x"])

    sums = seen(Model(), iter([{"x": torch.zeros(3, 2), "y": torch.tensor([0, 0, 2])}]), None)
    assert sums[SEEN].tolist() == [2.0, 0.0, 1.0, 0.0]
    assert seen.finish(sums)[SEEN].tolist() == [2.0, 3.0, 1.0, 0.0]
    # the penalty reads the previous model directory; a model identical to it pays nothing
    from raydl.model_dir import load_model

    mdir = _model_dir(tmp_path)
    prev = load_model(mdir).module
    d = Distill(alpha=1.0, temperature=2.0, previous=str(mdir), classes=torch.tensor([True, True, False] + [False] * 7))
    batch = {"x": torch.randn(5, 64)}
    with torch.no_grad():
        assert float(d(prev, batch, prev(batch))) == pytest.approx(0.0, abs=1e-6)
        assert float(d(prev, batch, prev(batch) + torch.tensor([3.0] + [0.0] * 9))) > 0.1


def _model_dir(tmp_path: Path) -> Path:
    """A raydl model directory of an untrained 10-class MLP on 64 features (written as train writes it)."""
    from raydl.data import Preprocessing
    from raydl.model_dir import write_model_dir

    spec = spec_from_dict({"data": {"source": "digits", "standardize": "none"}, "model": {"name": "mlp", "hidden": [8]}})
    prep = Preprocessing(PIXELS, LABEL, "classification", list(range(10)), [0.0] * 64, [1.0] * 64)
    from raydl.batches import build_kind

    model = build_model(spec.model, build_kind(prep), 10)
    return write_model_dir(tmp_path / "model", model.state_dict(), spec, prep, {"final": {}}, {})


def test_the_multihead_model_scores_only_its_tasks_classes():
    from raydl.models.multihead import MASKED

    class Kind:
        name, shape = "tabular", (65,)

    model = build_model(ModelSpec.model_validate({"name": "multihead_mlp", "hidden": [16]}), Kind, 10)
    x = torch.randn(4, 65)
    x[:, -1] = torch.tensor([0.0, 1.0, 4.0, 1.0])
    out = model({"x": x})
    for row, task in enumerate([0, 1, 4, 1]):
        live = (out[row] != MASKED).nonzero().flatten().tolist()
        assert live == [2 * task, 2 * task + 1]
    assert len(model.heads) == 5
    torch.testing.assert_close(out[1, 2:4], model.heads[1](model.trunk(x[1:2, :-1]))[0])
    # a batch of one task: the other heads get zero gradients, not none (DDP needs every parameter used)
    x[:, -1] = 2.0
    model(x)[:, 4:6].sum().backward()
    for t, head in enumerate(model.heads):
        assert head.weight.grad is not None and (head.weight.grad.abs().sum() > 0) == (t == 2), t


def test_every_strategy_is_registered_with_typed_parameters():
    assert {"naive", "cumulative", "joint", "replay", "ewc", "lwf"} <= set(STRATEGIES.names())
    with pytest.raises(SpecError, match=r"continual.policy: Input should be 'reservoir' or 'class_balanced'"):
        spec_from_dict({"data": {"source": "digits"}, "continual": {"strategy": "replay", "policy": "fifo"}})
    with pytest.raises(SpecError, match=r"continual.temperature: Input should be greater than 0"):
        spec_from_dict({"data": {"source": "digits"}, "continual": {"strategy": "lwf", "temperature": 0}})


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_continual_configs_build_their_stream(path):
    from raydl.launch import check_components
    from raydl.spec import load_spec

    spec = load_spec(path)
    stream = build_stream(spec)
    assert len(stream) >= 2 and spec.continual is not None
    build_strategy(spec)
    from raydl.continual.run import experience_spec

    exp = experience_spec(spec, stream, 0, path, None, "exp1")
    assert exp.data.classes == stream.classes and exp.data.split.test == 0
    from raydl.data import Preprocessing

    n = len(stream.features)
    prep = Preprocessing(stream.features, stream.label, "classification", stream.classes, [0.0] * n, [1.0] * n)
    check_components(exp, prep, {"x": np.zeros((2, n), np.float32)})


def test_results_are_written_and_logged_to_wandb_offline(tmp_path):
    import shutil

    from raydl.continual.run import HEATMAP, REPORT, RESULT, _identity, write_results

    spec = spec_from_dict({"run": {"name": "wb", "storage_path": str(tmp_path)}, "data": {"source": "digits", "standardize": "none"},
                           "stream": {"scenario": "split_digits", "experiences": 2}})
    stream = build_stream(spec)
    root = tmp_path / "wb"
    root.mkdir()
    done = [{"name": "exp1", "accuracies": [1.0, 0.0], "model_dir": "a", "train_rows": 3, "seconds": 1.0},
            {"name": "exp2", "accuracies": [0.5, 0.9], "model_dir": "b", "train_rows": 3, "seconds": 1.0}]
    out = write_results(spec, stream, root, _identity(spec, stream), done, False)
    assert out["average_accuracy"] == pytest.approx(0.7) and out["forgetting"] == pytest.approx(0.5)
    assert (root / HEATMAP).read_bytes()[:4] == b"\x89PNG" and "exp 2" in (root / REPORT).read_text()
    assert json.loads((root / RESULT).read_text())["backward_transfer"] == pytest.approx(-0.5)
    wandb = shutil.which("wandb") or str(Path(sys.executable).parent / "wandb")
    got = subprocess.run([wandb, "leet", "inspect", "--summary", "--json", out["wandb_dir"]], capture_output=True,
                         text=True, timeout=60, check=True)
    logged = json.loads(got.stdout)["summary"]
    assert (logged["average_accuracy"], logged["forgetting"], logged["backward_transfer"]) == pytest.approx((0.7, 0.5, -0.5))
    assert (logged["accuracy/exp1"], logged["accuracy/exp2"]) == (0.5, 0.9)


def test_a_multihead_model_must_match_the_streams_task_layout():
    from raydl.continual.run import _check

    def spec(scenario: str, experiences: int, k: int):
        return _spec(scenario, stream={"scenario": scenario, "experiences": experiences},
                     model={"name": "multihead_mlp", "hidden": [8], "classes_per_task": k})

    for ok in (spec("split_digits_tasks", 5, 2), spec("split_digits_tasks", 2, 5)):
        _check(ok, build_stream(ok))
    bad = spec("split_digits_tasks", 2, 2)  # 5 classes a task, 2 a head: classes 2-4 of task 0 would never be scored
    with pytest.raises(SpecError, match=r"^model.classes_per_task: 2, but experience 1 \(classes 0,1,2,3,4\) has classes "
                                        r"\[0, 1, 2, 3, 4\] under task id\(s\) \[0.0\].*set model.classes_per_task: 5"):
        _check(bad, build_stream(bad))
    no_task = spec("split_digits", 5, 2)  # the last pixel would be read as the task id
    with pytest.raises(SpecError, match=r"^model.name: multihead_mlp reads the task id from the last feature column, 'task'"):
        _check(no_task, build_stream(no_task))
