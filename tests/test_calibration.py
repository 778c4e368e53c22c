"""Calibration metrics against independent implementations (torchmetrics, scikit-learn, hand
derivations), the calibrators on synthetic data with a known answer, and `raydl calibrate` on
model directories written without Ray (tests/model_dirs.py), read back by predict and evaluate."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from model_dirs import model_dir
from sklearn.metrics import brier_score_loss, log_loss

from raydl.calibration import CalibrationError
from raydl.calibration import metrics as cm
from raydl.calibration.api import calibrate_model_dir
from raydl.calibration.calibrators import METHODS, Calibrator, fit, log_softmax
from raydl.cli import main
from raydl.inference import evaluate, predict
from raydl.model_dir import load_model
from raydl.tasks import Classification


def predictions(n: int, k: int, seed: int, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / 2): over-confident logits by design."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=scale, size=(n, k))
    p = np.exp(log_softmax(z / 2.0))
    y = np.array([rng.choice(k, p=row) for row in p])
    return z, y


@pytest.mark.parametrize("k", [2, 3, 10])
def test_ece_and_mce_match_torchmetrics(k):
    from torchmetrics.classification import MulticlassCalibrationError

    z, y = predictions(3000, k, seed=k)
    lp = log_softmax(z)
    parts = sum(cm.calibration_stats(lp[i:i + 700], y[i:i + 700]) for i in range(0, 3000, 700))  # additive
    assert np.allclose(parts, cm.calibration_stats(lp, y))
    m = cm.summarize(parts)
    probs, target = torch.from_numpy(np.exp(lp)), torch.from_numpy(y)
    for norm, ours in (("l1", m["ece"]), ("max", m["mce"])):
        theirs = MulticlassCalibrationError(num_classes=k, n_bins=15, norm=norm)(probs, target).item()
        assert abs(ours - theirs) < 1e-6, (norm, ours, theirs)
    assert m["ece"] > 0.05  # miscalibrated by construction: the comparison is not of zeros
    assert m["nll"] == pytest.approx(log_loss(y, np.exp(lp), labels=list(range(k))), abs=1e-9)
    assert m["brier"] == pytest.approx(brier_score_loss(y, np.exp(lp), labels=list(range(k)), scale_by_half=False), abs=1e-9)
    assert m["accuracy"] == pytest.approx(np.mean(lp.argmax(1) == y))


def test_a_confidence_of_one_counts_in_the_last_bin():
    # confidences 1.0 (right), 0.95 (wrong), 0.5 (right): bins 14, 14, 7
    lp = np.log(np.array([[1.0, 0.0], [0.05, 0.95], [0.5, 0.5]]) + 1e-300)
    s = cm.calibration_stats(lp, np.array([0, 0, 0]))
    count, conf, acc = cm.bins(s)
    assert count[14] == 2 and count[7] == 1 and count.sum() == 3
    assert conf[14] == pytest.approx(0.975) and acc[14] == pytest.approx(0.5)
    # by hand: |0.5 - 0.975| * 2/3 + |1 - 0.5| * 1/3
    assert cm.ece(s) == pytest.approx(0.475 * 2 / 3 + 0.5 / 3)
    assert cm.mce(s) == pytest.approx(0.5)
    assert list(cm.bin_index(np.array([0.0, 1 / 15 - 1e-9, 1 / 15 + 1e-9, 0.999999, 1.0]))) == [0, 0, 1, 14, 14]


def test_adaptive_ece_uses_equal_mass_bins():
    conf = np.array([0.9, 0.2, 0.6, 0.8, 0.3, 0.7])
    ok = np.array([1, 0, 1, 0, 1, 1], dtype=float)
    # 3 bins of 2 after sorting: (0.2, 0.3) acc 0.5 conf 0.25; (0.6, 0.7) acc 1 conf 0.65; (0.8, 0.9) acc 0.5 conf 0.85
    assert cm.adaptive_ece(conf, ok, n_bins=3) == pytest.approx((0.25 + 0.35 + 0.35) * 2 / 6)
    assert cm.adaptive_ece(conf, ok, n_bins=1) == pytest.approx(abs(ok.mean() - conf.mean()))
    assert cm.adaptive_ece(conf[:2], ok[:2], n_bins=15) == pytest.approx(np.mean(np.abs(ok[:2] - conf[:2])))


def test_temperature_and_platt_recover_known_parameters():
    z, y = predictions(20000, 5, seed=1)
    assert fit("temperature", z, y).params["temperature"] == pytest.approx(2.0, rel=0.05)
    rng = np.random.default_rng(2)
    margin = rng.normal(scale=4.0, size=20000)
    yb = (rng.random(20000) < 1 / (1 + np.exp(-(0.5 * margin - 1.0)))).astype(int)
    params = fit("platt", np.stack([np.zeros_like(margin), margin], 1), yb).params
    assert params["a"] == pytest.approx(0.5, abs=0.03) and params["b"] == pytest.approx(-1.0, abs=0.06)


@pytest.mark.parametrize("k", [2, 4])
def test_isotonic_matches_sklearn_and_lowers_held_out_ece(k):
    from sklearn.isotonic import IsotonicRegression

    z, y = predictions(6000, k, seed=10 + k)
    cal = fit("isotonic", z[:3000], y[:3000])
    p_fit = np.exp(log_softmax(z[:3000]))
    col = 1 if k == 2 else 0
    ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p_fit[:, col], y[:3000] == col)
    got = np.exp(cal.log_probs(z[3000:]))
    assert np.allclose(got.sum(1), 1.0)
    if k == 2:  # one curve, applied as scikit-learn applies it
        expected = np.clip(ref.predict(np.exp(log_softmax(z[3000:]))[:, 1]), 1e-6, 1 - 1e-6)
        assert np.allclose(got[:, 1], expected, atol=1e-12)
    held_out = slice(3000, None)
    before = cm.calibration_metrics(log_softmax(z[held_out]), y[held_out])["ece"]
    after = cm.calibration_metrics(cal.log_probs(z[held_out]), y[held_out])["ece"]
    assert after < before / 2, (before, after)


def test_calibrator_json_round_trip_and_bad_files():
    z, y = predictions(500, 3, seed=3)
    for method in ("temperature", "isotonic"):
        cal = fit(method, z, y, {"source": "test"})
        back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())), "x")
        assert np.allclose(back.log_probs(z), cal.log_probs(z))
    for bad, why in [({"method": "magic"}, "not a raydl calibrator"),
                     ({"format_version": 1, "method": "magic", "n_classes": 3, "params": {}}, "unknown calibration method 'magic'"),
                     ({"format_version": 1, "method": "temperature", "n_classes": 3, "params": {}}, "not a raydl calibrator"),
                     ({"format_version": 9, "method": "temperature", "n_classes": 3, "params": {}}, "newer than this raydl")]:
        with pytest.raises(CalibrationError, match=why):
            Calibrator.from_dict(bad, "calibration.json")


def test_classification_task_reports_calibration_metrics_additively():
    z, y = predictions(900, 4, seed=4)
    from raydl.losses import LOSSES
    from raydl.spec import LossSpec

    task = Classification([0, 1, 2, 3], LOSSES.get("cross_entropy")(LossSpec()))
    out = torch.from_numpy(z).float()
    s = sum(task.stats(out[i:i + 300], {"y": torch.from_numpy(y[i:i + 300])}) for i in range(0, 900, 300))
    m = task.summarize(s, "val")
    ref = cm.summarize(cm.calibration_stats(log_softmax(z), y))
    assert {k: m[f"val_{k}"] for k in ("ece", "mce", "brier", "nll")} == pytest.approx(
        {k: ref[k] for k in ("ece", "mce", "brier", "nll")}, abs=1e-5)
    assert {"val_ece", "val_mce", "val_brier", "val_nll"} <= set(f"val_{n}" for n in task.metric_names())


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return model_dir(tmp_path_factory.mktemp("digits") / "model", source="digits", steps=150, lr=0.05,
                     model={"name": "mlp", "hidden": [32]})


def test_calibrate_writes_the_calibrator_and_predict_and_evaluate_apply_it(digits_dir, tmp_path, capsys):
    raw = load_model(digits_dir)
    from sklearn.datasets import load_digits

    x = load_digits().data
    logits = raw.logits(x)
    assert main(["calibrate", str(digits_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    t = result["params"]["temperature"]
    assert result["fitted_on"]["source"] == "the validation split" and set(result["metrics"]) == {"val", "test"}
    val = result["metrics"]["val"]
    assert val["after"]["nll"] < val["before"]["nll"] and val["after"]["ece"] < val["before"]["ece"]
    assert {p.name for p in digits_dir.iterdir()} >= {"calibration.json", "reliability.png", "calibration.html", "weights.pt"}
    assert (digits_dir / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "data:image/png;base64," in (digits_dir / "calibration.html").read_text()
    metrics = json.loads((digits_dir / "metrics.json").read_text())
    assert metrics["final"]["status"] == "finished" and metrics["calibration"]["metrics"]["val"] == val

    preds = tmp_path / "p.parquet"
    predict(digits_dir, "digits", preds)
    table = pq.read_table(preds)
    probs = np.stack([table.column(f"prob_{c}").to_numpy() for c in range(10)], 1)
    assert np.allclose(probs, np.exp(log_softmax(logits / t)), atol=1e-5)  # softmax(logits / T)
    ev = evaluate(digits_dir, "digits")
    lp = log_softmax(logits / t)
    assert ev["eval_ece"] == pytest.approx(cm.ece(cm.calibration_stats(lp, load_digits().target)), abs=1e-5)
    assert ev["eval_accuracy"] == pytest.approx(np.mean(logits.argmax(1) == load_digits().target))

    # isotonic replaces it; fitting starts from the raw logits again
    r = calibrate_model_dir(digits_dir, "isotonic")
    assert r["metrics"]["val"]["before"] == val["before"] and load_model(digits_dir).calibrator.method == "isotonic"


def test_calibrate_on_given_labelled_data_and_a_binary_model(tmp_path):
    mdir = model_dir(tmp_path / "bc", source="breast_cancer", steps=100, lr=0.02,
                     loss={"name": "log_loss"})  # one logit + sigmoid
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    table = pa.table({**{n: d.data[:, i] for i, n in enumerate(load_model(mdir).features)}, "benign": d.target})
    pq.write_table(table, tmp_path / "labelled.parquet")
    r = calibrate_model_dir(mdir, "platt", data=str(tmp_path / "labelled.parquet"))
    assert set(r["metrics"]) == {"data"} and r["fitted_on"]["rows"] == len(d.target)
    preds = tmp_path / "p.parquet"
    predict(mdir, str(tmp_path / "labelled.parquet"), preds)
    p1 = pq.read_table(preds).column("prob_1").to_numpy()
    m = load_model(mdir)
    z = m.outputs(table.select(m.features).to_pandas().to_numpy()).numpy().reshape(-1)
    a, b = r["params"]["a"], r["params"]["b"]
    assert np.allclose(p1, 1 / (1 + np.exp(-(a * z + b))), atol=1e-5)
    # scikit-learn's Platt scaling (the sigmoid of CalibratedClassifierCV, same smoothed targets)
    # on the same logits: P(y=1) = 1 / (1 + exp(A z + B)), so A = -a and B = -b
    from sklearn.calibration import _sigmoid_calibration

    big_a, big_b = _sigmoid_calibration(z.astype(np.float64), d.target)
    assert (a, b) == pytest.approx((-big_a, -big_b), rel=1e-3, abs=1e-4)


def one_line(capsys, args) -> tuple[int, str]:
    rc = main(args)
    cap = capsys.readouterr()
    assert cap.out == "" and len(cap.err.strip().splitlines()) == 1, cap.err
    return rc, cap.err


def test_bad_input_is_one_line_exit_2_and_leaves_the_dir_alone(tmp_path, capsys):
    reg = model_dir(tmp_path / "diabetes", source="diabetes")
    rc, err = one_line(capsys, ["calibrate", str(reg)])
    assert rc == 2 and "a regression model (label 'progression') has no class probabilities to calibrate" in err
    iris = model_dir(tmp_path / "iris", source="iris", steps=20)
    before = sorted(p.name for p in iris.iterdir())
    rc, err = one_line(capsys, ["calibrate", str(iris), "--method", "isotonic"])
    assert rc == 2 and "--method isotonic: the validation split has 32 row(s); isotonic calibration needs at least 100 rows" in err
    rc, err = one_line(capsys, ["calibrate", str(iris), "--method", "platt"])
    assert rc == 2 and "Platt scaling is for binary classifiers and this model has 3 classes" in err
    rc, err = one_line(capsys, ["calibrate", str(tmp_path), "--method", "temperature"])
    assert rc == 2 and "not a raydl model directory" in err
    assert sorted(p.name for p in iris.iterdir()) == before  # nothing written

    # the training data changed since: its validation split cannot be rebuilt
    src = tmp_path / "data.parquet"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": (x[:, 0] > 0).astype(int)}), src)
    mdir = model_dir(tmp_path / "filemodel", data={"source": str(src), "label": "y"})
    pq.write_table(pa.table({"a": x[:, 0] + 1, "b": x[:, 1], "c": x[:, 2], "y": (x[:, 0] > 0).astype(int)}), src)
    rc, err = one_line(capsys, ["calibrate", str(mdir)])
    assert rc == 2 and "has changed since training" in err and "give labelled data with --data" in err

    # the same checks, before training, for the spec's training.calibration
    from raydl.calibration.api import check_calibration
    from raydl.data import prepare
    from raydl.spec import DataSpec

    with pytest.raises(CalibrationError, match=r"^training.calibration: isotonic: the validation split has 32 row\(s\).*"
                                               r"use training.calibration: temperature, or add data or raise data.split.val$"):
        check_calibration("isotonic", prepare(DataSpec(source="iris")))
    with pytest.raises(CalibrationError, match="^training.calibration: temperature: the data is a regression task"):
        check_calibration("temperature", prepare(DataSpec(source="diabetes")))
    check_calibration("platt", prepare(DataSpec(source="breast_cancer")))

    (iris / "calibration.json").write_text("{not json")
    rc, err = one_line(capsys, ["evaluate", str(iris), "iris"])
    assert rc == 2 and "calibration.json: not readable as JSON" in err
    assert METHODS.names() == ["isotonic", "platt", "temperature"]
