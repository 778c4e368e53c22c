"""The typed spec: defaults, overrides, and every problem reported at once with its path."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from raydl.errors import SpecError
from raydl.spec import apply_overrides, load_spec, parse_override, spec_from_dict

MIN = {"data": {"source": "digits"}}


def test_defaults_fill_every_section():
    spec = spec_from_dict(MIN)
    assert spec.training.epochs == 20 and spec.scaling.num_workers == 2
    assert spec.data.split.train == 0.6 and spec.tracking.backend == "wandb"


def test_spec_is_frozen():
    spec = spec_from_dict(MIN)
    with pytest.raises(ValidationError):
        spec.training.epochs = 3


def test_overrides_parse_yaml_values():
    assert parse_override("optimizer.lr=3e-3") == (["optimizer", "lr"], 0.003)
    assert parse_override("model.hidden=[8, 4]") == (["model", "hidden"], [8, 4])
    raw = apply_overrides(MIN, ["training.epochs=3", "tracking=none", "data.split.val=0.3", "data.split.test=0.1"])
    spec = spec_from_dict(raw)
    assert spec.training.epochs == 3 and spec.tracking.backend == "none" and spec.data.split.val == 0.3


@pytest.mark.parametrize("bad", ["noequals", "=3", "a..b=1", "x=[1,"])
def test_bad_overrides_are_rejected(bad):
    with pytest.raises(SpecError, match="override"):
        parse_override(bad)


def test_every_problem_listed_with_its_path():
    raw = {
        "data": {"source": "digits", "split": {"train": 0.5, "val": 0.2, "test": 0.2}},
        "training": {"epochs": 0, "batch_size": "big", "bogus": 1},
        "model": {"activation": "swish"},
    }
    with pytest.raises(SpecError) as e:
        spec_from_dict(raw)
    msg = str(e.value)
    for path in ("data.split", "training.epochs", "training.batch_size", "training.bogus: unknown key", "model.activation"):
        assert path in msg, path
    assert "5 problems" in msg and "\n" not in msg


def test_missing_source_is_reported():
    with pytest.raises(SpecError, match="data: required key is missing"):
        spec_from_dict({})


def test_load_spec_reports_yaml_position(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  source: digits\n  split: {train: 0.6\n")
    with pytest.raises(SpecError, match=r"malformed YAML .* line \d+"):
        load_spec(p)


def test_load_spec_with_overrides(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("data: {source: xor}\ntraining: {epochs: 5}\n")
    assert load_spec(p, ["training.epochs=7"]).training.epochs == 7
