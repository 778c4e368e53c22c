"""finetune: start from a model directory, freeze by pattern, per-pattern learning rates, and the
problems a user can make (each one line and exit 2, before Ray starts)."""

from __future__ import annotations

import pytest
import torch
import yaml

from raydl import finetune
from raydl.batches import build_kind
from raydl.cli import main
from raydl.data import prepare
from raydl.model_dir import manifest, write_model_dir
from raydl.models import build_model
from raydl.spec import spec_from_dict
from raydl.tasks import build_task

BASE = {"data": {"source": "digits"}, "model": {"name": "mlp", "hidden": [32, 16]}, "tracking": "none"}


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    spec = spec_from_dict(BASE)
    p = prepare(spec.data)
    torch.manual_seed(3)
    module = build_model(spec.model, build_kind(p.prep), build_task(p.prep, spec.loss).n_outputs())
    d = tmp_path_factory.mktemp("ft") / "model"
    return write_model_dir(d, module.state_dict(), spec, p.prep, {"final": {}}, manifest(spec, p.fingerprint))


def _model(spec):
    p = prepare(spec.data)
    return build_model(spec.model, build_kind(p.prep), build_task(p.prep, spec.loss).n_outputs())


def test_weights_load_frozen_layers_stay_and_groups_scale(source_dir):
    spec = spec_from_dict({**BASE, "finetune": {"from": str(source_dir), "freeze": ["1.*"], "lr_mult": {"3.*": 0.1}}})
    model = _model(spec)
    finetune.check(model, spec.finetune)
    finetune.apply(model, spec.finetune)
    saved = torch.load(source_dir / "weights.pt", weights_only=True)
    assert all(torch.equal(t, saved[n]) for n, t in model.state_dict().items())
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"1.weight", "1.bias"}
    groups = finetune.param_groups(model, 1e-2, spec.finetune.lr_mult)
    lrs = sorted((g["lr"], len(g["params"])) for g in groups)
    assert lrs == [(pytest.approx(1e-3), 2), (pytest.approx(1e-2), 2)]  # layer 3 at 0.1x, the head at 1x


def test_reinit_keeps_a_new_head_of_another_shape(source_dir):
    spec = spec_from_dict({**BASE, "data": {"source": "iris"},
                           "finetune": {"from": str(source_dir), "reinit": ["1.*", "5.*"]}})
    model = _model(spec)  # iris: 4 features and 3 classes, so the first and last layers differ
    finetune.check(model, spec.finetune)
    before = model.state_dict()["5.weight"].clone()
    finetune.apply(model, spec.finetune)
    assert torch.equal(model.state_dict()["5.weight"], before)
    assert torch.equal(model.state_dict()["3.weight"], torch.load(source_dir / "weights.pt", weights_only=True)["3.weight"])


def _validate(tmp_path, capsys, finetune_section, **data):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**BASE, "data": {**BASE["data"], **data}, "finetune": finetune_section}))
    code = main(["validate", str(path)])
    err = capsys.readouterr().err.strip()
    return code, err


def test_a_source_that_does_not_exist(tmp_path, capsys):
    code, err = _validate(tmp_path, capsys, {"from": str(tmp_path / "nope")})
    assert code == 2 and "finetune.from:" in err and "does not exist" in err and "\n" not in err


def test_layers_that_do_not_match(tmp_path, capsys, source_dir):
    code, err = _validate(tmp_path, capsys, {"from": str(source_dir)}, source="iris")
    assert code == 2 and "do not match this model" in err and "1.weight has shape (32, 64) in the source, (32, 4) here" in err
    assert "finetune.reinit" in err and "\n" not in err


def test_a_freeze_pattern_that_matches_nothing(tmp_path, capsys, source_dir):
    code, err = _validate(tmp_path, capsys, {"from": str(source_dir), "freeze": ["backbone.*"]})
    assert code == 2 and "finetune.freeze: pattern 'backbone.*' matches no parameter" in err
    assert "1.weight" in err  # the model's parameter names are shown


def test_a_non_positive_learning_rate_multiplier(tmp_path, capsys, source_dir):
    code, err = _validate(tmp_path, capsys, {"from": str(source_dir), "lr_mult": {"1.*": 0}})
    assert code == 2 and "finetune.lr_mult" in err and "must be > 0" in err
