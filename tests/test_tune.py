"""raydl tune: the tune: section and its bad input (one line, exit 2, nothing written), and the
trial-placement arithmetic. The searches themselves run in test_tune_slow.py."""

from __future__ import annotations

import pytest
import yaml

from raydl.cli import main
from raydl.spec import load_spec
from raydl.tune.run import trials_that_fit


def spec_file(tmp_path, tune: dict, **sections) -> str:
    raw = {
        "run": {"name": "search", "storage_path": str(tmp_path / "runs")},
        "data": {"source": "digits", "standardize": "global"},
        "model": {"name": "mlp", "hidden": [16]},
        "training": {"epochs": 2},
        "scaling": {"num_workers": 1},
        "tracking": "none",
        "tune": {"metric": "val_accuracy", "mode": "max", "space": {"optimizer.lr": {"loguniform": [1e-4, 1e-2]}},
                 **tune},
        **sections,
    }
    p = tmp_path / "tune.yaml"
    p.write_text(yaml.safe_dump(raw))
    return str(p)


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("space, expected", [
    ({"optimizer.lrr": {"choice": [0.1, 0.01]}}, "tune.space.optimizer.lrr: choice value 0.1 is not allowed: optimizer.lrr: unknown key"),
    ({"model.widthh": {"choice": [8]}}, "tune.space.model.widthh: choice value 8 is not allowed: model.widthh: unknown parameter of model mlp"),
    ({"optimizer.lr": {"loguniform": [0.0, 0.1]}}, "tune.space.optimizer.lr: loguniform: low must be > 0 (a log scale)"),
    ({"model.dropout": {"uniform": [0.0, 1.5]}}, "tune.space.model.dropout: uniform value 1.5 is not allowed: model.dropout:"),
    ({"training.batch_size": {"randint": [0, 64]}}, "tune.space.training.batch_size: randint value 0 is not allowed"),
    ({"optimizer.lr": {"uniform": [0.1]}}, "uniform takes [low, high]"),
    ({"scaling.num_workers": {"choice": [1, 2]}}, "the search space cannot change scaling.*"),
])
def test_bad_search_space_is_one_line_exit_2(tmp_path, capsys, space, expected):
    path = spec_file(tmp_path, {"space": space})
    code, err = run_cli(capsys, "tune", path)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("raydl: error: invalid job spec")
    assert expected in err
    assert not (tmp_path / "runs").exists()


def test_every_problem_is_listed_at_once(tmp_path):
    path = spec_file(tmp_path, {"space": {"optimizer.lrr": {"choice": [1]}, "model.dropout": {"uniform": [0, 2]}}},
                     optimizer={"lr": -1})
    with pytest.raises(Exception) as e:
        load_spec(path)
    msg = str(e.value)
    assert "3 problems" in msg and "optimizer.lr:" in msg and "tune.space.optimizer.lrr" in msg and "tune.space.model.dropout" in msg


def test_pbt_mutation_outside_the_space(tmp_path, capsys):
    path = spec_file(tmp_path, {"scheduler": {"name": "pbt", "mutations": ["optimizer.lr", "model.dropout"]}})
    code, err = run_cli(capsys, "tune", path)
    assert code == 2
    assert "'model.dropout' is not a key of tune.space (keys: optimizer.lr)" in err


def test_metric_not_reported_by_the_task(tmp_path, capsys):
    path = spec_file(tmp_path, {"metric": "val_r2"})
    code, err = run_cli(capsys, "tune", path)
    assert code == 2
    assert "tune.metric: 'val_r2' is not reported by a classification task; valid: train_loss, val_loss, val_accuracy" in err
    assert not (tmp_path / "runs" / "search").exists()


def test_resume_of_a_search_that_does_not_exist(tmp_path, capsys):
    path = spec_file(tmp_path, {})
    code, err = run_cli(capsys, "tune", path, "--resume")
    assert code == 2
    assert "--resume: no search to resume at" in err and "start it without --resume" in err


def test_max_t_beyond_the_epochs(tmp_path, capsys):
    path = spec_file(tmp_path, {"scheduler": {"name": "asha", "max_t": 5}})
    code, err = run_cli(capsys, "tune", path)
    assert code == 2 and "tune.scheduler.max_t: 5 epochs is more than training.epochs (2)" in err


def test_optuna_refuses_a_grid(tmp_path):
    path = spec_file(tmp_path, {"search": {"name": "optuna"}, "space": {"model.hidden": {"grid": [[8], [16]]}}})
    with pytest.raises(Exception, match="optuna samples its own values; use choice, not grid"):
        load_spec(path)


def test_the_space_is_read_back_as_typed_distributions(tmp_path):
    spec = load_spec(spec_file(tmp_path, {"space": {"model.hidden": {"choice": [[8], [16, 8]]},
                                                   "training.batch_size": {"qrandint": [16, 64, 16]}}}))
    assert spec.tune.space["model.hidden"].kind == "choice"
    assert spec.tune.space["training.batch_size"].probes() == [16, 64]
    assert spec.tune.scheduler.name == "fifo" and spec.tune.search.name == "basic"


def test_trials_that_fit():
    driver, worker = {"CPU": 1.0}, {"CPU": 1.0}
    assert trials_that_fit(driver, worker, 2, [{"CPU": 3.0}]) == 1
    assert trials_that_fit(driver, worker, 1, [{"CPU": 4.0}]) == 2
    assert trials_that_fit(driver, worker, 2, [{"CPU": 2.0}]) == 0
    assert trials_that_fit({"CPU": 0.5}, worker, 1, [{"CPU": 3.0}]) == 2
    # a worker must fit on one node: two 1-CPU nodes hold no 2-CPU worker
    assert trials_that_fit(driver, {"CPU": 2.0}, 1, [{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}]) == 0
    assert trials_that_fit(driver, {"CPU": 1.0, "GPU": 1.0}, 1, [{"CPU": 8.0, "GPU": 2.0}]) == 2
