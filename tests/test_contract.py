"""The batch/task contract, typed per-model parameters and the model-directory format version."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from torch import nn

from raydl import loop
from raydl.batches import FixedShape, batch_len, build_kind, to_device
from raydl.cli import main
from raydl.data import prepare, prepare_arrays
from raydl.datasets import DATASETS, Arrays, Builtin
from raydl.errors import DataError, SpecError
from raydl.inference import evaluate, predict
from raydl.loop import FiniteCheck, WorkerConfig, _grad_health, evaluate_batches
from raydl.model_dir import FORMAT_VERSION, load_model, manifest, write_model_dir
from raydl.models import MODELS, build_model
from raydl.penalties import L1, build_penalties
from raydl.sharding import InMemoryShards
from raydl.spec import JobSpec, spec_from_dict
from raydl.tasks import TASKS, build_task

REPO = Path(__file__).resolve().parents[1]


# ---- per-model parameters ----------------------------------------------------------------


def test_wrong_and_unknown_model_parameters_are_listed_with_the_other_problems():
    raw = {"data": {"source": "iris"}, "training": {"epochs": 0},
           "model": {"name": "mlp", "hidden": [8, "wide"], "dropout": 1.5, "depth": 3}}
    with pytest.raises(SpecError) as err:
        spec_from_dict(raw)
    msg = str(err.value)
    assert msg.startswith("invalid job spec : 4 problems: ")
    for part in ("training.epochs: Input should be greater than or equal to 1 (got 0)",
                 "model.hidden.1: Input should be a valid integer (got 'wide')",
                 "model.dropout: Input should be less than 1 (got 1.5)",
                 "model.depth: unknown parameter of model mlp (its parameters: hidden, activation, dropout, norm, init)"):
        assert part in msg, msg


def test_a_parameter_of_another_model_is_unknown_and_an_unknown_model_lists_the_zoo():
    with pytest.raises(SpecError, match=r"model.hidden: unknown parameter of model logistic_regression \(its parameters: init\)"):
        spec_from_dict({"data": {"source": "iris"}, "model": {"name": "logistic_regression", "hidden": [4]}})
    with pytest.raises(SpecError, match=rf"model.name: unknown model 'resnet9000'; valid: {', '.join(MODELS.names())}$"):
        spec_from_dict({"data": {"source": "iris"}, "model": {"name": "resnet9000"}})


def test_every_shipped_config_validates_against_its_models_schema():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        spec = spec_from_dict(raw, origin=str(path))
        assert MODELS.get(spec.model.name).params.model_validate(spec.model.params) is not None


def test_raydl_models_lists_models_data_kinds_and_parameters(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in MODELS.names():
        assert re.search(rf"^{name}  \({', '.join(MODELS.get(name).kinds)} data\)", out, re.M), out
    assert "    hidden: list[int] = [128, 64]  (widths of the hidden layers)" in out
    assert "    activation: 'relu' | 'leaky_relu' | 'tanh' | 'sigmoid' = 'relu'" in out


# ---- the batch/task contract ---------------------------------------------------------------


def test_loop_names_no_model_family_task_or_data_kind():
    src = (REPO / "src" / "raydl" / "loop.py").read_text()
    names = [*MODELS.names(), *TASKS.names(), "tabular", "image", "image_shape", "n_classes", "(x, y)"]
    assert [n for n in names if n in src] == []


def test_a_batch_is_a_mapping_moved_in_one_place_and_counted_by_its_target():
    kind = FixedShape("image", (1, 2, 2))
    batch = kind.collate({"x": torch.arange(12.0).reshape(3, 4), "y": torch.tensor([0, 1, 0])})
    assert batch["x"].shape == (3, 1, 2, 2) and batch_len(batch) == 3
    moved = to_device(batch, torch.device("cpu"))
    assert set(moved) == {"x", "y"} and torch.equal(moved["x"], batch["x"])

    class Graphs:  # what torch-geometric's Batch offers: .to() and num_graphs
        num_graphs = 5

        def to(self, device, non_blocking=False):
            self.device = device
            return self

    g = to_device(Graphs(), torch.device("cpu"))
    assert g.device == torch.device("cpu") and batch_len(g) == 5


class _HostEvent:
    """A CUDA event's stand-in on the CPU, where copies are already done when they return."""

    def record(self) -> None: ...

    def synchronize(self) -> None: ...


def _lagged_check() -> FiniteCheck:
    """The lagged path a GPU takes, with host buffers in place of pinned memory and CUDA events."""
    check = FiniteCheck(torch.device("cpu"))
    check.lag, check.flags, check.events = True, [torch.ones((), dtype=torch.bool) for _ in range(2)], [_HostEvent(), _HostEvent()]
    return check


def test_finite_check_on_a_gpu_reads_each_verdict_one_step_late():
    check = _lagged_check()
    nan, ok = torch.tensor(float("nan")), torch.tensor(1.0)
    # Gradient accumulation over 2 micro-batches checks only odd steps: step 1's verdict must
    # survive step 3's copy (it is read then, one check late).
    assert check.bad_step(nan, 1) is None
    assert check.bad_step(ok, 3) == 1
    check = _lagged_check()
    assert [check.bad_step(ok, i) for i in range(3)] == [None, None, None]
    assert check.bad_step(torch.tensor(float("inf")), 3) is None and check.flush() == 3  # the epoch's last step
    assert check.flush() is None
    # On the CPU the verdict is immediate.
    cpu = FiniteCheck(torch.device("cpu"))
    assert cpu.bad_step(ok, 0) is None and cpu.bad_step(nan, 1) == 1 and cpu.flush() is None


def test_divergence_check_sees_every_parameter_that_has_a_gradient():
    params = [nn.Parameter(torch.zeros(3)) for _ in range(3)]
    params[0].grad = torch.tensor([0.0, float("nan"), 0.0])  # the first layer, not the output layer
    params[2].grad = torch.ones(3)  # params[1] is frozen or an unused head: no gradient
    assert not torch.isfinite(_grad_health(params))
    params[0].grad = torch.ones(3)
    assert torch.isfinite(_grad_health(params)) and _grad_health(params).item() == 6.0
    assert _grad_health([nn.Parameter(torch.zeros(1))]).item() == 0.0


def test_l1_is_a_penalty_term_on_weights_not_biases():
    spec = JobSpec.model_validate({"data": {"source": "iris"}, "optimizer": {"l1": 0.5}})
    (pen,) = build_penalties(spec, nn.Linear(1, 1))
    m = nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, -2.0]]))
        m.bias.fill_(10.0)
    assert isinstance(pen, L1) and pen(m, {}, torch.zeros(1)).item() == pytest.approx(1.5)
    assert build_penalties(JobSpec.model_validate({"data": {"source": "iris"}}), nn.Linear(1, 1)) == []


def test_worker_config_is_one_typed_object_that_survives_pickling():
    spec = JobSpec.model_validate({"data": {"source": "iris"}, "model": {"hidden": [4]}})
    cfg = WorkerConfig(spec=spec, prep=prepare(spec.data).prep, loader="in_memory", run_dir="/r", manifest={"a": 1},
                       launch_ts=1.0)
    back = cloudpickle.loads(cloudpickle.dumps(cfg))
    assert back == cfg and back.spec.model.params == {"hidden": [4]}


def test_evaluation_statistics_add_up_across_rank_parts():
    spec = JobSpec.model_validate({"data": {"source": "wine"}, "model": {"hidden": [8]}})
    p = prepare(spec.data)
    task, kind = build_task(p.prep, spec.loss), build_kind(p.prep)
    model = build_model(spec.model, kind, task.n_outputs())
    x, y = torch.from_numpy(p.val.X), torch.from_numpy(p.val.y)

    def parts(world):
        return [evaluate_batches(model, [{"x": x[r::world], "y": y[r::world]}], task, kind, "cpu") for r in range(world)]

    whole = task.summarize(sum(parts(1)), "val")
    split = task.summarize(sum(parts(3)), "val")
    assert whole == pytest.approx(split, rel=1e-6)


# ---- the model directory's format version ---------------------------------------------------


@pytest.fixture
def logreg_dir(tmp_path) -> Path:
    spec = JobSpec.model_validate({"data": {"source": "breast_cancer"}, "model": {"name": "logistic_regression"},
                                   "loss": {"name": "log_loss"}, "tracking": "none"})
    p = prepare(spec.data)
    module = build_model(spec.model, build_kind(p.prep), build_task(p.prep, spec.loss).n_outputs())
    return write_model_dir(tmp_path / "model", module.state_dict(), spec, p.prep, {"final": {}}, manifest(spec, p.fingerprint))


def test_the_format_version_is_recorded_and_a_newer_one_refused(logreg_dir):
    man = json.loads((logreg_dir / "manifest.json").read_text())
    assert man["format_version"] == FORMAT_VERSION == 3
    man["format_version"] = 4
    (logreg_dir / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(DataError, match=r"model directory format 4 is newer than this raydl reads \(formats 1 to 3\); upgrade raydl"):
        load_model(logreg_dir)


def test_a_version_2_image_directory_is_read(tmp_path):
    """Version 2 named an image model's input shape `image_shape` in preprocessing.json."""
    spec = spec_from_dict({"data": {"source": "digits_images", "standardize": "global"}, "model": {"name": "mlp", "hidden": [8]}})
    p = prepare(spec.data)
    module = build_model(spec.model, build_kind(p.prep), build_task(p.prep, spec.loss).n_outputs())
    mdir = write_model_dir(tmp_path / "model", module.state_dict(), spec, p.prep, {"final": {}}, manifest(spec, p.fingerprint))
    man, pre = (json.loads((mdir / f).read_text()) for f in ("manifest.json", "preprocessing.json"))
    assert (pre["kind"], pre["shape"]) == ("image", [1, 8, 8])
    man["format_version"] = 2
    for k in ("kind", "shape", "kind_params"):
        del pre[k]
    pre["image_shape"] = [1, 8, 8]
    (mdir / "manifest.json").write_text(json.dumps(man))
    (mdir / "preprocessing.json").write_text(json.dumps(pre))
    model = load_model(mdir)
    assert model.kind.name == "image" and model.kind.shape == (1, 8, 8)
    assert 0.0 <= evaluate(mdir, "digits_images")["eval_accuracy"] <= 1.0


def test_a_version_1_directory_is_read(logreg_dir):
    """Version 1 had no format_version and wrote every MLP field into any model's section."""
    man = json.loads((logreg_dir / "manifest.json").read_text())
    del man["format_version"]
    (logreg_dir / "manifest.json").write_text(json.dumps(man))
    spec = yaml.safe_load((logreg_dir / "spec.yaml").read_text())
    spec["model"] = {"name": "logistic_regression", "hidden": [128, 64], "activation": "relu", "dropout": 0.0,
                     "norm": "none", "init": "xavier"}
    (logreg_dir / "spec.yaml").write_text(yaml.safe_dump(spec))
    model = load_model(logreg_dir)
    assert model.spec.model.params == {"init": "xavier"}
    assert 0.0 <= evaluate(logreg_dir, "breast_cancer")["eval_accuracy"] <= 1.0


def test_loop_module_has_no_untyped_config_keys():
    src = Path(loop.__file__).read_text()
    assert re.findall(r'config\["(\w+)"\]', src) == ["worker"]


def test_predictions_come_from_the_task(logreg_dir):
    model = load_model(logreg_dir)
    p = prepare(model.spec.data)
    raw = np.asarray(p.raw_train.to_pandas().to_numpy(), dtype=np.float64)[:5]
    cols = model.task.prediction_columns(model.outputs(raw))
    assert set(cols) == {"prediction", "prob_0", "prob_1"}
    assert np.allclose(cols["prob_0"] + cols["prob_1"], 1.0, atol=1e-6)


# ---- array data (what sequences, masks and graphs build on) --------------------------------

def _blobs_4x4(spec) -> Arrays:
    rng = np.random.default_rng(spec.seed)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 1, 4, 4)) + y[:, None, None, None] * 2.0
    return Arrays({"x": x, "y": y, "weight": rng.random(300).astype(np.float32)}, classes=["a", "b", "c"])


if "contract_arrays" not in DATASETS:
    DATASETS.register("contract_arrays")(Builtin(_blobs_4x4, "shape", "classification", "image", (1, 4, 4)))


def test_array_data_is_split_scaled_sharded_and_evaluated_by_column(tmp_path):
    spec = spec_from_dict({"data": {"source": "contract_arrays"}, "model": {"name": "mlp", "hidden": [16]}})
    p = prepare(spec.data)
    assert (p.prep.kind, p.prep.sample_shape, p.prep.features, p.prep.classes) == ("image", [1, 4, 4], [], ["a", "b", "c"])
    assert len(p.prep.mean) == 1 and abs(float(p.train.X.mean())) < 1e-5 and p.raw_train is None
    assert set(p.train.cols) == {"x", "y", "weight"} and len(p.train) + len(p.val) + len(p.test) == 300
    # the split follows each row's content: rows given in another order land in the same splits
    raw = _blobs_4x4(spec.data)
    order = np.random.default_rng(1).permutation(300)
    shuffled = prepare_arrays(spec.data, Arrays({k: v[order] for k, v in raw.cols.items()}, raw.classes),
                              DATASETS.get("contract_arrays"))
    assert sorted(shuffled.val.cols["weight"].tolist()) == sorted(p.val.cols["weight"].tolist())
    # every column reaches every rank's batches
    shards = InMemoryShards({"train": p.train.cols, "val": p.val.cols}, rank=1, world=2, seed=0, shuffle=True)
    batch = next(shards.train(0, 8))
    assert set(batch) == {"x", "y", "weight"} and batch["x"].shape == (8, 1, 4, 4)
    assert sum(len(b["y"]) for b in shards.eval("val")) == (len(p.val) + 1 - 1) // 2
    module = build_model(spec.model, build_kind(p.prep), build_task(p.prep, spec.loss).n_outputs())
    mdir = write_model_dir(tmp_path / "model", module.state_dict(), spec, p.prep, {"final": {}}, manifest(spec, p.fingerprint))
    assert 0.0 <= evaluate(mdir, "contract_arrays")["eval_accuracy"] <= 1.0
    out = predict(mdir, "contract_arrays", tmp_path / "p.parquet")
    assert set(pq.read_table(out).column("prediction").to_pylist()) <= {"a", "b", "c"}


def test_evaluate_one_split_of_the_training_data(logreg_dir, capsys):
    p = prepare(load_model(logreg_dir).spec.data)
    test = evaluate(logreg_dir, "breast_cancer", split="test")
    assert set(test) >= {"test_accuracy", "test_loss"} and 0 <= test["test_accuracy"] <= 1
    model = load_model(logreg_dir)
    s = evaluate_batches(model.module, iter([{k: torch.as_tensor(v) for k, v in p.test.cols.items()}]),
                         model.task, model.kind, torch.device("cpu"))
    assert test["test_loss"] == pytest.approx(model.task.summarize(s, "test")["test_loss"], rel=1e-6)
    assert main(["evaluate", str(logreg_dir), "iris", "--split", "val"]) == 2
    assert "the splits are those of the data the model was trained on ('breast_cancer')" in capsys.readouterr().err


def test_inference_latency_times_up_to_its_repeats_within_a_budget(logreg_dir):
    from raydl.model_dir import inference_latency

    m = load_model(logreg_dir)
    calls = []
    forward = m.module.forward

    def counted(batch, delay=0.0):
        calls.append(len(batch["x"]))
        time.sleep(delay)
        return forward(batch)

    cols = {"x": np.zeros((300, len(m.features)), np.float32)}
    m.module.forward = counted
    out = inference_latency(m, cols, repeats=20, budget_s=10.0)  # a budget it never reaches: all repeats
    assert set(out) == {"latency_ms_per_sample_batch1", "latency_ms_per_sample_batch256"}
    assert calls == [1] * 21 + [256] * 21 and all(v > 0 for v in out.values())
    calls.clear()
    m.module.forward = lambda batch: counted(batch, delay=0.02)
    out = inference_latency(m, cols, repeats=20, budget_s=0.05)  # 20 ms a call: the warm-up, then 3 timed calls
    assert calls == [1] * 4 + [256] * 4
    assert out["latency_ms_per_sample_batch1"] >= 20 and out["latency_ms_per_sample_batch256"] >= 20 / 256


CHECK_ON_CPU = textwrap.dedent("""
    import sys
    import torch
    from torch import nn
    from raydl import launch
    from raydl.models import register_model
    from raydl.spec import Section, spec_from_dict

    class NoParams(Section):
        pass

    class Picky(nn.Module):  # takes 63 features: the data has 64
        def __init__(self, n):
            super().__init__()
            self.lin = nn.Linear(63, n)

        def forward(self, batch):
            return self.lin(batch["x"])

    register_model("picky", NoParams)(lambda p, kind, n: Picky(n))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    launch.resolve(spec_from_dict({"data": {"source": "digits"}, "model": {"name": "mlp", "hidden": [16]}, "tracking": "none"}))
    launch.resolve(spec_from_dict({"data": {"source": "digits_images"}, "model": {"name": "cnn", "init": "he"}, "tracking": "none"}))
    print("dynamo imported:", "torch._dynamo" in sys.modules, "generator untouched:", torch.equal(state, torch.get_rng_state()))
    try:
        launch.resolve(spec_from_dict({"data": {"source": "digits"}, "model": {"name": "picky"}, "tracking": "none"}))
    except Exception as e:
        print(type(e).__name__, e)
""")


def test_a_small_models_forward_check_runs_on_the_cpu_and_still_names_the_problem():
    """`launch.check_components` runs the model on two rows before Ray starts. A small model runs
    on the CPU: on the meta device torch's decompositions import torch._dynamo and sympy (0.8-0.9 s
    of every `raydl train`), as `normal_` does when the model's size is counted there (a CNN's
    kaiming_normal_). The check draws nothing from the caller's random generator, and a model that
    cannot take the data still fails with one line."""
    out = subprocess.run([sys.executable, "-c", CHECK_ON_CPU], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "dynamo imported: False generator untouched: True"
    assert re.match(r"SpecError model: picky cannot run on this data \(inputs of shape \(64,\)\): mat1 and mat2 shapes", lines[1])
