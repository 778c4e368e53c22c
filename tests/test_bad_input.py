"""Bad input fails with one clear line (`raydl: error: ...`, no traceback), a non-zero exit, and
nothing half-written in the model directory.

Most cases fail before Ray starts, so they call `raydl.cli.main` in-process; a few run the real
`raydl` executable to prove the exit code. The resource and divergence cases need Ray (`ray_local`).
"""

from __future__ import annotations

import hashlib
import math
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from clusters import RAYDL, ray_env

from raydl.cli import main

RUN = "bad-run"


# ---- helpers ---------------------------------------------------------------------------------


def write_spec(tmp_path: Path, text: str | None = None, **data: str) -> Path:
    """A small spec (iris, tiny MLP, no tracking) unless `text` is given."""
    p = tmp_path / "spec.yaml"
    if text is None:
        data_lines = "".join(f"\n  {k}: {v}" for k, v in {"source": "iris", **data}.items())
        text = (
            f"run: {{name: {RUN}, storage_path: {tmp_path / 'runs'}}}\n"
            f"data:{data_lines}\n"
            "model: {name: mlp, hidden: [8]}\n"
            "training: {epochs: 2, batch_size: 16}\n"
            "scaling: {num_workers: 2}\n"
            "tracking: none\n"
        )
    p.write_text(text)
    return p


def seed_model_dir(tmp_path: Path) -> Path:
    """An existing model directory from an earlier run; a failed run must leave it as it was."""
    model = tmp_path / "runs" / RUN / "model"
    model.mkdir(parents=True)
    (model / "weights.pt").write_bytes(b"earlier weights")
    (model / "metrics.json").write_text('{"final": {"val_accuracy": 0.5}}')
    return model


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def error_line(err: str) -> str:
    """The one `raydl: error:` line in stderr (and no traceback anywhere)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("raydl: error:")]
    assert len(lines) == 1, err
    return lines[0]


def fails_cleanly(capsys, tmp_path: Path, argv: list[str], *expected: str) -> str:
    """Run `raydl train ...` in-process: exit 2, exactly one stderr line naming `expected`,
    nothing on stdout, and the run's storage (a seeded model dir) untouched."""
    seed_model_dir(tmp_path)
    before = snapshot(tmp_path / "runs")
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, err)
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    line = error_line(err)
    for e in expected:
        assert e in line, f"{e!r} not in {line!r}"
    assert snapshot(tmp_path / "runs") == before
    return line


def table_file(tmp_path: Path, columns: dict, fmt: str = "parquet") -> Path:
    table = pa.table(columns)
    p = tmp_path / f"data.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, p)
    else:
        pacsv.write_csv(table, p)
    return p


def good_columns(n: int = 40) -> dict:
    rng = np.random.default_rng(0)
    return {"a": rng.normal(size=n), "b": rng.normal(size=n), "y": np.arange(n) % 2}


# ---- the spec ---------------------------------------------------------------------------------


def test_malformed_yaml(capsys, tmp_path):
    spec = write_spec(tmp_path, "run: {name: x\ndata: [source: iris\n")
    fails_cleanly(capsys, tmp_path, ["train", str(spec)], "malformed YAML", str(spec), "line")


def test_spec_file_missing(capsys, tmp_path):
    fails_cleanly(capsys, tmp_path, ["train", str(tmp_path / "nope.yaml")], "job spec not found")


@pytest.mark.parametrize(
    ("override", "path", "words"),
    [
        ("training.epoch=3", "training.epoch", "unknown key"),  # unknown key (typo)
        ("extras.foo=1", "extras", "unknown key"),  # unknown section
        ("training.epochs=many", "training.epochs", "integer"),  # wrong type
        ("scaling.use_gpu=[1]", "scaling.use_gpu", "bool"),  # wrong type
        ("optimizer.lr=-0.1", "optimizer.lr", "greater than 0"),  # out of range
        ("model.dropout=1.5", "model.dropout", "less than 1"),  # out of range
        ("model.hidden=[8,0]", "model.hidden", "at least 1"),  # out of range
        ("data.split.train=0.5", "data.split", "add up"),  # 0.5 + 0.2 + 0.2 != 1
    ],
)
def test_invalid_spec_value(capsys, tmp_path, override, path, words):
    line = fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path)), override], "invalid job spec", f"{path}:", words)
    assert "1 problem:" in line


def test_every_problem_listed_at_once(capsys, tmp_path):
    spec = write_spec(tmp_path)
    line = fails_cleanly(
        capsys, tmp_path, ["train", str(spec), "training.epochs=0", "optimizer.lr=-1", "model.activaton=relu"],
        "3 problems", "training.epochs:", "optimizer.lr:", "model.activaton: unknown parameter of model mlp",
    )
    assert line.count(";") >= 2


def test_required_key_missing(capsys, tmp_path):
    spec = write_spec(tmp_path, f"run: {{name: {RUN}, storage_path: {tmp_path / 'runs'}}}\nmodel: {{name: mlp}}\n")
    fails_cleanly(capsys, tmp_path, ["train", str(spec)], "data: required key is missing")


def test_bad_override_syntax(capsys, tmp_path):
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path)), "training.epochs"], "bad override", "dotted.key=value")


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("model.name=transformerz", ["model.name", "unknown model 'transformerz'", "mlp"]),
        ("loss.name=hinge_of_doom", ["loss", "hinge_of_doom", "cross_entropy"]),
        ("optimizer.name=adamax9", ["optimizer.name", "unknown optimizer 'adamax9'", "adam"]),
        ("data.source=digitz", ["data.source", "digitz", "not a built-in dataset", "digits"]),
    ],
)
def test_unknown_name(capsys, tmp_path, override, words):
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path)), override], *words)


# ---- the data ---------------------------------------------------------------------------------


def test_missing_data_path(capsys, tmp_path):
    missing = tmp_path / "nowhere" / "train.parquet"
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path, source=str(missing)))], "data.source", str(missing))


def test_unreadable_data_file(capsys, tmp_path):
    bad = tmp_path / "data.parquet"
    bad.write_bytes(b"this is not parquet")
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path, source=str(bad)))], "data.source", "cannot read")


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_label_column_missing(capsys, tmp_path, fmt):
    f = table_file(tmp_path, good_columns(), fmt)
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path, source=str(f), label="target"))],
                  "data.label", "'target' not in the data")


def test_label_not_given(capsys, tmp_path):
    f = table_file(tmp_path, good_columns())
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path, source=str(f)))], "data.label", "no label column")


def test_feature_column_missing(capsys, tmp_path):
    f = table_file(tmp_path, good_columns())
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path, source=str(f), label="y", features="[a, zz]"))],
                  "data.features", "zz")


def test_non_numeric_feature(capsys, tmp_path):
    cols = good_columns()
    cols["colour"] = ["red", "green"] * 20
    f = table_file(tmp_path, cols)
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path, source=str(f), label="y"))],
                  "data.features", "'colour'", "numeric")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None])
def test_non_finite_feature(capsys, tmp_path, bad):
    cols = good_columns()
    b = list(cols["b"])
    b[7] = bad
    cols["b"] = pa.array(b, pa.float64())
    f = table_file(tmp_path, cols)
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path, source=str(f), label="y"))],
                  "data.features", "'b'", "row 7")


@pytest.mark.parametrize(("value", "standardize"), [(1e39, "false"), (1.7e308, "true")])
def test_feature_too_large_for_float32(capsys, tmp_path, value, standardize):
    # Finite as float64, but inf as the model's float32 input (or the standardisation overflows).
    cols = good_columns()
    cols["a"][:2] = value
    f = table_file(tmp_path, cols)
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path, source=str(f), label="y", standardize=standardize))],
                  "data.features", "'a'", "too large")


def test_non_finite_feature_in_csv(capsys, tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("a,b,y\n" + "".join(f"{i},{'inf' if i == 3 else i * 2},{i % 2}\n" for i in range(20)))
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path, source=str(f), label="y"))], "'b'", "row 3")


def test_missing_label_value(capsys, tmp_path):
    cols = good_columns()
    y = list(cols["y"])
    y[0] = None
    cols["y"] = pa.array(y, pa.int64())
    f = table_file(tmp_path, cols)
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path, source=str(f), label="y"))], "data.label", "missing")


def test_empty_dataset(capsys, tmp_path):
    f = table_file(tmp_path, {"a": pa.array([], pa.float64()), "y": pa.array([], pa.int64())})
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path, source=str(f), label="y"))], "data.source", "no rows")


def test_fewer_rows_than_workers(capsys, tmp_path):
    f = table_file(tmp_path, good_columns(n=5))  # a train split of at most 5 rows
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path, source=str(f), label="y")), "scaling.num_workers=6"],
                  "the train split has", "fewer than the 6 worker(s)", "scaling.num_workers")


def test_single_class(capsys, tmp_path):
    cols = good_columns()
    cols["y"] = np.zeros(40, dtype=np.int64)
    f = table_file(tmp_path, cols)
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path, source=str(f), label="y"))], "data.label", "2 classes")


def test_unknown_checkpoint_metric(capsys, tmp_path):
    fails_cleanly(capsys, tmp_path, ["train", str(write_spec(tmp_path)), "checkpoint.metric=val_r2"],
                  "checkpoint.metric", "val_r2", "val_accuracy")


# ---- the real executable: exit codes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "expected"),
    [("yaml", "malformed YAML"), ("data", "NaN")],
)
def test_real_exit_code(tmp_path, case, expected):
    argv = [RAYDL, "train"]
    if case == "yaml":
        argv.append(str(write_spec(tmp_path, "data: {source: iris\n")))
    else:
        cols = good_columns()
        cols["a"][3] = np.nan
        argv.append(str(write_spec(tmp_path, source=str(table_file(tmp_path, cols)), label="y")))
    out = subprocess.run(argv, env=ray_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    assert expected in error_line(out.stderr)
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "runs").exists()


# ---- cases that need a cluster ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["scaling.num_workers=4"], ["4 workers", "CPU: 4 asked", "3 in the cluster"]),
        (["scaling.use_gpu=true"], ["GPU: 2 asked", "0 in the cluster"]),
        (["scaling.num_workers=1", "scaling.cpus_per_worker=5"], ["CPU: 5 asked"]),
    ],
)
def test_more_than_the_cluster_has(ray_local, capsys, tmp_path, overrides, words):
    spec = write_spec(tmp_path)
    model = seed_model_dir(tmp_path)
    before = snapshot(model)
    capsys.readouterr()
    t0 = time.monotonic()
    rc = main(["train", str(spec), *overrides])
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 2, err
    line = error_line(err)
    for w in ["scaling", *words]:
        assert w in line, f"{w!r} not in {line!r}"
    assert took < 30, f"took {took:.0f} s: the check must not wait for Ray's 60 s timeout"
    assert snapshot(model) == before


@pytest.mark.slow
def test_training_diverges_to_nan(ray_local, capsys, tmp_path):
    # Regression on diabetes (targets up to 346, MSE) with plain SGD at lr=10: the weights blow up
    # within a few steps and the gradient norm becomes inf/NaN in the first epoch.
    spec = write_spec(
        tmp_path,
        f"run: {{name: {RUN}, storage_path: {tmp_path / 'runs'}}}\n"
        "data: {source: diabetes}\n"
        "model: {name: mlp, hidden: [32]}\n"
        "optimizer: {name: sgd, lr: 10}\n"
        "training: {epochs: 3, batch_size: 16}\n"
        "scaling: {num_workers: 1}\n"
        "tracking: none\n",
    )
    model = seed_model_dir(tmp_path)
    before = snapshot(model)
    capsys.readouterr()
    rc = main(["train", str(spec)])
    err = capsys.readouterr().err
    assert rc == 2, err
    line = error_line(err)
    assert "diverged" in line and "NaN or infinite" in line, line
    m = re.search(r"at epoch (\d+), step (\d+)", line)
    assert m, line
    assert int(m.group(1)) == 1 and int(m.group(2)) >= 1, line
    assert snapshot(model) == before, "a diverged run must not write the model directory"


def test_a_model_whose_output_the_task_cannot_read(capsys, tmp_path):
    """A classifier (one logit per class) on segmentation data (per-pixel classes): found by a
    forward pass on the meta device before Ray starts, not at the first step on the workers."""
    spec = write_spec(tmp_path, source="shapes_segmentation", n_samples=40)
    fails_cleanly(capsys, tmp_path, ["train", str(spec), "model={name: cnn, channels: [4]}"],
                  "segmentation task needs per-pixel logits", "got shape")

