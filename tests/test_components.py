"""Registries, models, losses, schedules and metrics: the pieces the loop is built from."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, r2_score, recall_score

from raydl.batches import FixedShape
from raydl.errors import SpecError, UnknownNameError
from raydl.losses import LOSSES
from raydl.models import MODELS
from raydl.models import build_model as _build
from raydl.optim import build_optimizer, lr_factor
from raydl.registry import Registry
from raydl.spec import LossSpec, ModelSpec, OptimizerSpec
from raydl.tasks import Classification, Regression, build_task


def build_model(spec: ModelSpec, in_features: int, n_outputs: int):
    return _build(spec, FixedShape("tabular", (in_features,)), n_outputs)


def task_of(loss: LossSpec, task: str, n_classes: int = 0, target_std: float = 1.0):
    prep = SimpleNamespace(task=task, classes=list(range(n_classes)), target_mean=0.0, target_std=target_std)
    return build_task(prep, loss)


def stats(task, out, y) -> np.ndarray:
    return task.stats(torch.as_tensor(out), {"y": torch.as_tensor(y)})


def onehot_logits(pred: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k)[pred] * 10.0


def test_registry_rejects_duplicates_and_lists_valid_names():
    reg: Registry[int] = Registry("widget")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="twice"):
        reg.register("a")(2)
    with pytest.raises(UnknownNameError, match="unknown widget 'b'; valid: a"):
        reg.get("b")


def test_unknown_model_lists_the_zoo():
    with pytest.raises(UnknownNameError, match="model.name: unknown model 'resnet9000'; valid: .*mlp"):
        build_model(ModelSpec(name="resnet9000"), 4, 2)


@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "tanh", "sigmoid"])
def test_mlp_shapes_and_layers(norm, act):
    m = build_model(ModelSpec(hidden=[8, 4], activation=act, norm=norm, dropout=0.2, init="he"), 5, 3)
    assert m(torch.randn(6, 5)).shape == (6, 3)
    kinds = {type(x).__name__ for x in m.modules()}
    assert "Dropout" in kinds and ({"none": set(), "batch": {"BatchNorm1d"}, "layer": {"LayerNorm"}}[norm] <= kinds)


def test_xavier_and_he_init_scale():
    torch.manual_seed(0)
    he = build_model(ModelSpec(hidden=[512], init="he"), 512, 2)[1].weight
    xa = build_model(ModelSpec(hidden=[512], init="xavier", activation="tanh"), 512, 2)[1].weight
    assert he.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    assert xa.std().item() == pytest.approx(5 / 3 * math.sqrt(2 / 1024), rel=0.05)
    assert build_model(ModelSpec(hidden=[512], init="he"), 512, 2)[1].bias.abs().sum() == 0


def test_losses_match_torch():
    z, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    ce = task_of(LossSpec(name="cross_entropy", label_smoothing=0.1), "classification", 3)
    assert ce.loss(z, {"y": y}).item() == pytest.approx(torch.nn.functional.cross_entropy(z, y, label_smoothing=0.1).item())
    zb, yb = torch.randn(8, 1), torch.randint(0, 2, (8,))
    ll = task_of(LossSpec(name="log_loss"), "classification", 2)
    p = torch.sigmoid(zb.reshape(-1))
    manual = -(yb * p.log() + (1 - yb) * (1 - p).log()).mean()
    assert ll.loss(zb, {"y": yb}).item() == pytest.approx(manual.item(), rel=1e-5)
    assert ll.n_outputs() == 1 and ce.n_outputs() == 3
    assert torch.allclose(torch.softmax(ll.logits(zb), 1)[:, 1], p)  # binary: [0, z] has sigmoid's probabilities
    hub = task_of(LossSpec(name="huber", huber_delta=0.5), "regression")
    zr, yr = torch.randn(8, 1), torch.randn(8)
    assert hub.loss(zr, {"y": yr}).item() == pytest.approx(torch.nn.functional.huber_loss(zr.reshape(-1), yr, delta=0.5).item())
    assert set(LOSSES.names()) >= {"cross_entropy", "log_loss", "mse", "mae", "huber"}


def test_loss_must_fit_the_task():
    with pytest.raises(SpecError, match="regression loss but the data is a classification task"):
        task_of(LossSpec(name="mse"), "classification", 3)
    with pytest.raises(SpecError, match="log_loss is binary"):
        task_of(LossSpec(name="log_loss"), "classification", 3)


def test_optimizers_and_schedules():
    params = [torch.nn.Parameter(torch.zeros(2))]
    for name, cls in [("sgd", torch.optim.SGD), ("momentum", torch.optim.SGD), ("rmsprop", torch.optim.RMSprop),
                      ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]:
        assert isinstance(build_optimizer(params, OptimizerSpec(name=name)), cls)
    assert build_optimizer(params, OptimizerSpec(name="momentum")).param_groups[0]["momentum"] == 0.9
    warm = OptimizerSpec(lr=1.0, schedule={"name": "cosine", "warmup_epochs": 2})
    assert [round(lr_factor(warm, e, 12), 3) for e in (0, 1, 2, 7, 12)] == [0.333, 0.667, 1.0, 0.5, 0.0]
    step = OptimizerSpec(lr=1.0, schedule={"name": "step", "step_size": 3, "gamma": 0.5})
    assert [lr_factor(step, e, 10) for e in (0, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25]


def test_classification_metrics_match_sklearn_and_merge_additively():
    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    task = task_of(LossSpec(), "classification", 4)
    assert isinstance(task, Classification)
    logits = onehot_logits(pred, 4)
    parts = [stats(task, logits[i : i + 100], y[i : i + 100]) for i in range(0, 500, 100)]
    m = task.summarize(sum(parts), "val")
    assert m["val_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["val_precision"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert m["val_recall"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert m["val_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    loss = torch.nn.functional.cross_entropy(torch.as_tensor(logits).float(), torch.as_tensor(y)).item()
    assert m["val_loss"] == pytest.approx(loss, rel=1e-5)


def test_regression_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.normal(size=300)
    pred = y + rng.normal(scale=0.5, size=300)
    task = task_of(LossSpec(), "regression")
    assert isinstance(task, Regression)
    s = stats(task, pred[:150, None], y[:150]) + stats(task, pred[150:, None], y[150:])
    m = task.summarize(s, "test")
    assert m["test_r2"] == pytest.approx(r2_score(y, pred))
    assert m["test_mse"] == pytest.approx(np.mean((pred - y) ** 2))
    assert m["test_mae"] == pytest.approx(np.mean(np.abs(pred - y)))


def test_models_registry_has_the_course_basics():
    assert {"mlp", "logistic_regression"} <= set(MODELS.names())


def test_regression_targets_are_standardised_on_train_and_decoded():
    from raydl.data import prepare
    from raydl.spec import DataSpec

    p = prepare(DataSpec(source="diabetes"))
    assert abs(float(p.train.y.mean())) < 1e-5 and abs(float(p.train.y.std()) - 1) < 1e-4
    assert p.prep.target_std > 10  # the raw label is in the tens to hundreds
    task = build_task(p.prep, LossSpec())
    raw = task.decode(p.val.y)
    assert np.allclose(task.encode_labels(raw, "val"), p.val.y, atol=1e-5)
    # MSE/MAE come back in the label's units; R² is unchanged by the scale
    s = stats(task, p.val.y[:, None] + 0.1, p.val.y)
    scaled = task.summarize(s, "v")
    assert scaled["v_mae"] == pytest.approx(0.1 * p.prep.target_std, rel=1e-4)
    assert scaled["v_r2"] == pytest.approx(task_of(LossSpec(), "regression").summarize(s, "v")["v_r2"])
